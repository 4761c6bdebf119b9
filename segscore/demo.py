"""``segscore demo``: the whole data flow on a fresh stack, before/after live events.

Starts the stack, simulates history, backfills and trains, starts the Faust worker
and the BentoML server, scores a few users, streams a live session for each of them
through Kafka, scores them again once the worker has written their features, prints
both, and stops everything it started.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from core.events import Event
from infra import local_stack, processes
from infra.settings import Settings, get_settings
from segscore.http_client import post_score

# Users whose behaviour a live session changes visibly: browsers who now buy.
LIVE_PLAN = (("window_shopper", True), ("cart_abandoner", True), ("loyal_buyer", True))
# A new visitor's cart add, stamped this much less than the shipped rule's 30
# minutes ago: timers run in event time, so it falls due this long after the
# demo streams it.
DEMO_CART_DUE_IN_SECONDS = 12
VISITOR = "visitor-demo"


@contextmanager
def _demo_home(home: Path | None) -> Iterator[Path]:
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="segscore-demo-") as tmp:
        yield Path(tmp)


def _score(url: str, user_ids: list[str]) -> dict[str, dict]:
    response = post_score(url, user_ids, top_k=50)
    response.raise_for_status()
    return {s["user_id"]: s for s in response.json()["scores"]}


def _wait_for_update(
    url: str, user_ids: list[str], before: dict[str, dict], timeout: float = 60.0
) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    after = before
    while time.monotonic() < deadline:
        after = _score(url, user_ids)
        # The history ends two minutes back, so a fresh age means the live write.
        changed = [
            u
            for u in user_ids
            if after[u]["feature_age_seconds"] is not None
            and after[u]["feature_age_seconds"] < 60
        ]
        if len(changed) == len(user_ids):
            return after
        time.sleep(0.5)
    raise TimeoutError("live events did not reach the online store in time")


def run_demo(
    users: int, days: float, home: Path | None, console: Console
) -> dict[str, dict[str, dict]]:
    """Run the demo end to end; returns the before/after scores."""
    from segscore.producer import produce_events, read_topic
    from segscore.simulator import live_session, simulate
    from training.workflow import run_training

    with _demo_home(home) as state_dir:
        os.environ["SEGSCORE_HOME"] = str(state_dir)
        os.environ["BENTOML_HOME"] = str(state_dir / "bentoml")
        settings = get_settings()
        console.rule("segscore demo")
        console.print(f"state dir {state_dir}")
        stack = local_stack.up(settings)
        started: list = []
        try:
            from infra.topics import ensure_topics

            ensure_topics(stack.kafka_broker, settings)
            console.print(f"redis {stack.redis_url}  kafka {stack.kafka_broker}")

            end = time.time() - 120
            with console.status(f"simulating {days:g} days of {users} shoppers"):
                sim = simulate(users, end - days * 86_400, end, seed=11)
            console.print(f"history: {len(sim.events)} events of {users} users")
            from core.event_files import write_events

            events_path = settings.data_dir / "events.parquet"
            write_events(sim.events, events_path)

            summary = run_training(
                settings, events_path, seed_online=True, console=console
            )
            console.print(
                f"trained: segments={summary['segments']} "
                f"propensity AUC={summary['propensity_auc']:.3f}"
            )

            worker = processes.start_worker(settings)
            started.append(worker)
            port = local_stack.free_port()
            server = processes.start_server(settings, port)
            started.append(server)
            url = f"http://127.0.0.1:{port}"
            with console.status("starting worker and scoring service"):
                processes.wait_ready(f"{url}/readyz", server)

            chosen = _pick_users(sim.personas)
            live = []
            for index, uid in enumerate(chosen):
                persona, buy = sim.personas[uid], LIVE_PLAN[index][1]
                session = live_session(uid, persona, 0.0, seed=index, buy=buy)
                live.extend(_ending_now(session))
            mover = _find_mover(settings, stack.redis_url, sim.personas, chosen)
            if mover is not None:
                chosen.append(mover[0])
                live.extend(mover[1])
            live.extend(_abandoned_cart(VISITOR))
            before = _score(url, chosen)
            produce_events(stack.kafka_broker, settings.events_topic, live)
            console.print(f"streamed {len(live)} live events for {len(chosen)} users")
            with console.status("waiting for the worker to update their features"):
                _wait_for_update(url, chosen, before)
                # The worker produces a change right after writing the state
                # that made it; the mover's is the last thing the demo waits for.
                records = read_topic(
                    stack.kafka_broker,
                    settings.segment_changes_topic,
                    1 if mover else 0,
                    timeout=15.0,
                )
                after = _score(url, chosen)
            _print_table(console, chosen, sim.personas, before, after)
            changes = [orjson.loads(value) for _, value in records]
            _print_changes(console, changes)
            with console.status(
                f"waiting for {VISITOR}'s cart to be abandoned "
                f"(due in {DEMO_CART_DUE_IN_SECONDS} s)"
            ):
                fired = _wait_for_trigger(
                    stack.kafka_broker, settings.triggers_topic, VISITOR
                )
            _print_triggers(console, fired)
            return {
                "before": before,
                "after": after,
                "segment_changes": changes,
                "triggers": fired,
            }
        finally:
            for proc in reversed(started):
                processes.stop(proc)
            with suppress(Exception):
                local_stack.down(settings)
            console.print("stopped everything the demo started")


def _abandoned_cart(user: str) -> list[Event]:
    """A look at a product and an add to cart, then nothing for 30 minutes.

    Stamped nearly 30 minutes ago (a first visit, so nothing makes them late):
    the cart timer counts event time, and falls due a few seconds from now.
    """
    added = time.time() - 30 * 60 + DEMO_CART_DUE_IN_SECONDS
    return [
        Event(
            event_id=f"demo-{user}-{kind}",
            user_id=user,
            event_type=kind,
            ts=added - age,
            session_id=f"demo-{user}",
            product_id="sku-demo-1",
            category="demo",
            price=49.0,
        )
        for kind, age in (("product_view", 40.0), ("add_to_cart", 0.0))
    ]


def _wait_for_trigger(
    broker: str, topic: str, user: str, timeout: float = 60.0
) -> list[dict]:
    """Every trigger on ``topic``, once ``user``'s cart_abandoned is among them."""
    from segscore.producer import read_topic

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fired = [orjson.loads(v) for _, v in read_topic(broker, topic, 10**6, 1.0)]
        if any(r["user_id"] == user and r["rule"] == "cart_abandoned" for r in fired):
            return fired
    raise TimeoutError(f"no cart_abandoned trigger for {user} in {timeout:.0f}s")


def _print_triggers(console: Console, fired: list[dict]) -> None:
    """The triggers the live events fired, as a campaign tool would receive them."""
    console.print(f"triggers on the triggers topic: {len(fired)}")
    for record in fired:
        shown = ("armed_at", "after_seconds") if record["kind"] == "timer" else ()
        values = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in record["values"].items()
            if k not in shown
        )
        line = f"  {record['user_id']}: {record['rule']} at {record['at']}"
        if record["kind"] == "timer":
            line += (
                f", {record['values']['after_seconds'] / 60:g} min after "
                f"{record['caused_by']} in event time"
            )
        else:
            line += f", caused by {record['caused_by']}"
        console.print(line + (f"; {values}" if values else ""))


def _ending_now(session: list[Event]) -> list[Event]:
    """The session moved in time so that it ends just now."""
    shift = time.time() - 5 - session[-1].ts
    return [e.model_copy(update={"ts": e.ts + shift}) for e in session]


def _find_mover(
    settings: Settings,
    redis_url: str,
    personas: dict[str, str],
    exclude: list[str],
    tries: int = 300,
) -> tuple[str, list[Event]] | None:
    """A user whose live buying session would move them to another segment.

    Tried in memory on a copy of their seeded state with the serving models, so the
    demo has a change to show; the worker then makes that change itself, live.
    """
    import redis

    from core.model_manager import load_models, wanted_tags
    from core.scoring import ONLINE_FEATURES, place
    from core.store.feast_config import feature_store
    from core.store.state_store import StateLayout, load_states
    from core.user_state import apply_event
    from segscore.simulator import live_session

    models = load_models(settings, wanted_tags(settings), ONLINE_FEATURES)
    layout = StateLayout.of(feature_store(settings, redis_url))
    candidates = [u for u in sorted(personas) if u not in exclude][:tries]
    states = load_states(redis.Redis.from_url(redis_url), layout, candidates)
    for seed, uid in enumerate(candidates):
        state = states[uid]
        if state.segment is None:
            continue
        session = live_session(uid, personas[uid], 0.0, seed=100 + seed, buy=True)
        session = _ending_now(session)
        for event in session:
            apply_event(state, event, settings.allowed_lateness_seconds)
        if place([state], [state.last_event_ts or 0.0], models).segments != [
            state.segment
        ]:
            return uid, session
    return None


def _pick_users(personas: dict[str, str]) -> list[str]:
    chosen = []
    for persona, _ in LIVE_PLAN:
        chosen.append(next(u for u, p in sorted(personas.items()) if p == persona))
    return chosen


def _biggest_change(before: dict, after: dict) -> str:
    """The feature whose contribution moved most, as 'name v0 -> v1 (+delta)'."""
    old = {e["feature"]: e for e in before["explanation"]}
    new = {e["feature"]: e for e in after["explanation"]}
    name = max(new, key=lambda f: abs(new[f]["contribution"] - old[f]["contribution"]))
    delta = new[name]["contribution"] - old[name]["contribution"]
    return (
        f"{name} {old[name]['value']:.4g} -> {new[name]['value']:.4g} "
        f"({delta:+.2f} log-odds)"
    )


def _print_table(
    console: Console,
    users: list[str],
    personas: dict[str, str],
    before: dict[str, dict],
    after: dict[str, dict],
) -> None:
    table = Table(title="Scores before and after live events", expand=True)
    for column in ("user", "persona", "segment", "propensity", "biggest change"):
        table.add_column(column, overflow="fold")
    for uid in users:
        b, a = before[uid], after[uid]
        segment = b["segment"]["name"]
        if a["segment"]["id"] != b["segment"]["id"]:
            segment = f"{segment} -> {a['segment']['name']}"
        table.add_row(
            uid,
            personas[uid],
            segment,
            f"{b['propensity']:.3f} -> {a['propensity']:.3f}",
            _biggest_change(b, a),
        )
    console.print(table)


def _print_changes(console: Console, changes: list[dict]) -> None:
    """The worker's live segment changes, as a campaign tool would receive them."""
    if not changes:
        console.print("no live segment change (every user stayed in their segment)")
        return
    console.print(f"live segment changes on the segment-changes topic: {len(changes)}")
    for change in changes:
        reasons = ", ".join(
            f"{r['feature']} {r['value']:.3g} (profiles {r['from_profile']:.3g} -> "
            f"{r['to_profile']:.3g})"
            for r in change["top_features"]
        )
        was = change["from_name"] or "(new)"
        console.print(
            f"  {change['user_id']}: {was} -> {change['to_name']} "
            f"at {change['at']}, caused by {change['caused_by']}"
            + (f"; {reasons}" if reasons else "")
        )
