"""``segscore bench stream``: broker -> Faust worker -> Redis/Feast, on real components.

Everything runs in a fresh temporary ``SEGSCORE_HOME``: its own redis-server and tansu
broker (:func:`infra.local_stack.up`), the Feast repo applied, and ONE real worker
subprocess (:func:`infra.processes.start_worker`). Three measurements:

Throughput (backlog)
    N valid events (uniform arrival over the last hour, round-robin over U users) are
    produced *before* the worker starts, so the worker reads a backlog; the broker
    tells which partition each event went to. Progress is observed through the
    per-user state keys in Redis: per partition, every ``CHECKPOINT_EVERY``-th event
    (and the last one) is a checkpoint, and a checkpoint is applied once its user's
    ``last_event_ts`` has reached the checkpoint's event time (event times strictly
    increase, and a partition is applied in order, batch by batch). Each poll (every
    50 ms) reads at most ``POLL_WINDOW`` keys per partition, so the measurement costs
    the worker and Redis next to nothing. ``events_per_s`` counts the events applied
    after the first observed write, divided by the time from that write to the moment
    the last event of every partition is applied. Afterwards every user's state is
    checked against the last event produced for it.

Bare consumer (same backlog, same run)
    Once the worker has applied the backlog, a bare aiokafka consumer (same fetch
    settings and batch size, no group) reads the same events from the beginning and
    only ``orjson.loads`` each one: ``raw_consumer_events_per_s``, timed like the
    worker from its first fetch. ``worker_share_of_raw`` = ``events_per_s`` / that:
    on a shared machine absolute rates swing, the share much less.

Nothing here reads the broker's end offsets (high watermarks): the bundled tansu
reports them behind records it has acknowledged, so "caught up" or "done" decided
from them would be wrong. The worker's progress is read from the states it wrote
to Redis; the bare consumer stops at the record counts the producer was
acknowledged for.

``worker_start_to_first_write_s`` runs from just before the worker process is
spawned to the first poll that sees one of its state writes in Redis.

Freshness (fixed offered rate)
    With the worker caught up, a paced aiokafka producer sends ``rate`` events/s for
    ``duration`` seconds, each with event time = its send time. About
    ``SAMPLES_PER_SECOND`` of them per second (distinct users within any second) are
    handed to a separate poller *process* that reads them back through Feast
    (``get_online_features(["user_stream_features:state"])``) until the user's state
    shows ``last_event_ts`` >= the event's time. Freshness = the end of that successful
    read minus the send time, so it is an upper bound that includes one Feast read and
    up to one poll period (both reported). Each read asks for the oldest
    ``POLL_MAX_USERS`` pending samples only, so a lagging worker does not also lose
    CPU to the poller. Samples still unseen 30 s after the last send count with the
    time they waited (``freshness_unresolved`` says how many; the percentiles are
    then lower bounds). ``freshness_trend_ms_per_s`` (slope of freshness over send
    time) tells a worker that keeps up (~0) from one falling behind the offered rate
    (> 0: the percentiles then only grow with the duration).

Everything started is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from rich.console import Console
from rich.table import Table

from core.events import Event, EventType, parse_event
from core.store.state_store import StateLayout, load_states
from core.user_state import UserState
from segscore.simulator import CATEGORIES

FEATURE = "user_stream_features:state"
CHECKPOINT_EVERY = 200
POLL_WINDOW = 32
BACKLOG_POLL_SECONDS = 0.05
FRESHNESS_POLL_SECONDS = 0.02
POLL_MAX_USERS = 256
SAMPLES_PER_SECOND = 200
# Event times travel as epoch milliseconds; compare with half a millisecond of slack.
TS_TOLERANCE = 0.0005

# Roughly the mix the simulator's personas produce.
EVENT_MIX: dict[EventType, float] = {
    EventType.PAGE_VIEW: 0.22,
    EventType.PRODUCT_VIEW: 0.38,
    EventType.SEARCH: 0.14,
    EventType.ADD_TO_CART: 0.12,
    EventType.REMOVE_FROM_CART: 0.04,
    EventType.CHECKOUT: 0.04,
    EventType.PURCHASE: 0.06,
}
_TYPES = list(EVENT_MIX)
_TYPE_P = np.array(list(EVENT_MIX.values())) / sum(EVENT_MIX.values())
_WITH_PRODUCT = {
    EventType.PRODUCT_VIEW,
    EventType.ADD_TO_CART,
    EventType.REMOVE_FROM_CART,
    EventType.PURCHASE,
}


class BenchError(RuntimeError):
    """The benchmark could not complete (worker died, timed out, wrong results)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run."""

    events: int = 100_000
    rate: int = 5_000
    users: int = 10_000
    duration: float = 15.0
    seed: int = 7
    batch_max_events: int | None = None
    batch_max_seconds: float | None = None
    profile: Path | None = None
    keep_home: bool = False


# --------------------------------------------------------------------------- events


class EventFactory:
    """Valid events, fast: vectorised draws, ``Event.model_construct``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._serial = 0

    def batch(self, user_ids: Sequence[str], times: Sequence[float]) -> list[Event]:
        """One event per (user, time), types drawn from :data:`EVENT_MIX`."""
        n = len(user_ids)
        rng = self.rng
        types = rng.choice(len(_TYPES), size=n, p=_TYPE_P).tolist()
        products = rng.integers(0, 5000, size=n).tolist()
        categories = rng.integers(0, len(CATEGORIES), size=n).tolist()
        prices = np.round(rng.gamma(2.0, 25.0, size=n), 2).tolist()
        quantities = rng.integers(1, 3, size=n).tolist()
        ids = rng.bytes(16 * n).hex()
        events = []
        for i in range(n):
            etype = _TYPES[types[i]]
            extra: dict[str, Any] = {}
            if etype in _WITH_PRODUCT:
                extra = {
                    "product_id": f"p{products[i]:05d}",
                    "category": CATEGORIES[categories[i]],
                    "price": prices[i],
                }
            if etype is EventType.PURCHASE:
                extra["quantity"] = quantities[i]
                extra["revenue"] = round(prices[i] * quantities[i], 2)
            events.append(
                Event.model_construct(
                    event_id=ids[32 * i : 32 * i + 32],
                    user_id=user_ids[i],
                    event_type=etype,
                    ts=round(times[i], 3),
                    session_id=f"s{self._serial + i:x}",
                    device="mobile",
                    channel="web",
                    country="DE",
                    **extra,
                )
            )
        self._serial += n
        return events


def bench_user(index: int) -> str:
    """The benchmark's user id for an index."""
    return f"b{index:07d}"


def backlog_events(n: int, users: int, end: float, seed: int) -> list[Event]:
    """``n`` events of ``users`` users, strictly increasing times ending at ``end``.

    Arrivals are uniform over an hour (longer if needed for 1 ms spacing); users take
    turns in a shuffled order, so each gets about ``n / users`` events.
    """
    span = max(3600.0, n / 200.0)
    times = np.round(np.linspace(end - span, end, n), 3).tolist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n) % users).tolist()
    events = EventFactory(seed + 1).batch([bench_user(i) for i in order], times)
    for event in events[:: max(1, n // 100)]:
        checked = parse_event(event.to_json())
        if not isinstance(checked, Event):
            raise BenchError(f"fabricated an invalid event: {checked}")
    return events


async def produce_backlog_async(
    broker: str, topic: str, events: Sequence[Event]
) -> list[int]:
    """Produce ``events`` in order; returns the partition each one landed in."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=broker, linger_ms=5, acks="all", max_batch_size=262_144
    )
    await producer.start()
    partitions: list[int] = []
    try:
        for start in range(0, len(events), 5000):
            futures = [
                await producer.send(topic, key=e.user_id.encode(), value=e.to_json())
                for e in events[start : start + 5000]
            ]
            partitions.extend(md.partition for md in await asyncio.gather(*futures))
    finally:
        await producer.stop()
    return partitions


async def raw_consume_async(
    broker: str,
    topic: str,
    expected: Counter[int],
    max_records: int,
    fetch_max_wait_ms: int,
    timeout: float,
) -> dict[str, float]:
    """A bare aiokafka consumer over the backlog: fetch and ``orjson.loads`` only.

    The ceiling our worker is measured against: the same broker, partitions,
    batch size and fetch settings as the worker's consumer, none of its work. It
    reads each partition from the beginning (assigned, no group) until it has
    ``expected[partition]`` records, a count taken from the producer's
    acknowledgements: the bundled broker's end offsets lag behind those, so they
    cannot tell when it is done. Timed like the worker, from the first fetch that
    returned records to the last record, so start-up is excluded.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in expected])
        await consumer.seek_to_beginning()
        seen: Counter[int] = Counter()
        total = sum(expected.values())
        loads = orjson.loads
        t_first = first_count = None
        t_start = time.monotonic()
        deadline = t_start + timeout
        while sum(seen.values()) < total:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"raw consumer read {sum(seen.values())}/{total} in {timeout:.0f}s"
                )
            records = await consumer.getmany(timeout_ms=100, max_records=max_records)
            for tp, part in records.items():
                for record in part:
                    loads(record.value)
                seen[tp.partition] += len(part)
            if records and t_first is None:
                t_first, first_count = time.monotonic(), sum(seen.values())
        t_done = time.monotonic()
    finally:
        await consumer.stop()
    assert t_first is not None and first_count is not None
    counted, seconds = total - first_count, t_done - t_first
    if counted <= 0 or seconds <= 0:
        # All in the first fetch (a tiny backlog): count it, start-up included.
        counted, seconds = total, t_done - t_start
    return {"events_per_s": counted / max(seconds, 1e-9), "seconds": seconds}


# ------------------------------------------------------------------- backlog tracker


@dataclass(frozen=True)
class _Checkpoint:
    user_id: str
    ts: float
    applied: int  # events of its partition applied once this one is


class BacklogTracker:
    """Cheap progress of a produced backlog, read from per-user state in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        layout: StateLayout,
        events: Sequence[Event],
        partitions: Sequence[int],
        every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.client = client
        self.layout = layout
        lanes: dict[int, list[int]] = {}
        for index, partition in enumerate(partitions):
            lanes.setdefault(partition, []).append(index)
        self.lanes: list[list[_Checkpoint]] = []
        for _, indices in sorted(lanes.items()):
            positions = list(range(0, len(indices), every))
            if positions[-1] != len(indices) - 1:
                positions.append(len(indices) - 1)
            self.lanes.append(
                [
                    _Checkpoint(
                        events[indices[p]].user_id,
                        events[indices[p]].ts,
                        p + 1,
                    )
                    for p in positions
                ]
            )
        self.next = [0] * len(self.lanes)
        self.applied = [0] * len(self.lanes)

    @property
    def complete(self) -> bool:
        """Whether the last event of every partition is applied."""
        return all(
            n >= len(lane) for n, lane in zip(self.next, self.lanes, strict=True)
        )

    def poll(self, window: int = POLL_WINDOW) -> int:
        """Read the next checkpoints; returns a lower bound of the events applied."""
        for lane_no, lane in enumerate(self.lanes):
            start = self.next[lane_no]
            if start >= len(lane):
                continue
            chunk = lane[start : start + window]
            # A user may appear twice in a window: load_states takes distinct ids.
            users = dict.fromkeys(c.user_id for c in chunk)
            states = load_states(self.client, self.layout, users)
            done = -1
            for j, checkpoint in enumerate(chunk):
                last = states[checkpoint.user_id].last_event_ts
                if last is not None and last >= checkpoint.ts - TS_TOLERANCE:
                    done = j
            if done >= 0:
                self.next[lane_no] = start + done + 1
                self.applied[lane_no] = chunk[done].applied
        return sum(self.applied)


def verify_states(
    client: redis.Redis, layout: StateLayout, events: Sequence[Event]
) -> int:
    """How many users' states do NOT end at the last event produced for them."""
    expected: dict[str, float] = {}
    for event in events:
        expected[event.user_id] = event.ts
    users = list(expected)
    wrong = 0
    for start in range(0, len(users), 5000):
        states = load_states(client, layout, users[start : start + 5000])
        for uid, state in states.items():
            last = state.last_event_ts
            if last is None or abs(last - expected[uid]) > TS_TOLERANCE:
                wrong += 1
    return wrong


# ------------------------------------------------------------------ process helpers


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process (all threads), Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU share of a few processes over an interval (1.0 = one core busy)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start: dict[str, float | None] = {}
        self.t0 = 0.0

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def end(self) -> dict[str, float | None]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before, after = self.start.get(name), cpu_seconds(pid)
            out[name] = (
                None
                if before is None or after is None
                else round((after - before) / wall, 3)
            )
        return out


class CrashWatch:
    """Spots a crashed Faust agent in the worker log (Faust restarts it forever)."""

    MARK = b"Crashed reason="

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0

    def crashed(self) -> str | None:
        """The first crash line written since the last call, if any."""
        start = max(0, self.offset - len(self.MARK))  # a mark split across reads
        try:
            with self.log.open("rb") as f:
                f.seek(start)
                chunk = f.read()
        except OSError:
            return None
        self.offset = start + len(chunk)
        at = chunk.find(self.MARK)
        if at < 0:
            return None
        end = chunk.find(b"\n", at)
        return chunk[at : end if end > 0 else None][:500].decode(errors="replace")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def py_spy_binary() -> str:
    """py-spy next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start_profiler(pid: int, out: Path, log: Path) -> subprocess.Popen:
    """``py-spy record`` attached to ``pid``: collapsed stacks of GIL-holding threads.

    The worker is bound by one interpreter lock, so what holds the GIL is where its
    throughput goes; ``--nonblocking`` keeps the sampling from pausing it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        py_spy_binary(), "record", "--pid", str(pid), "--rate", "100",
        "--gil", "--nonblocking", "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    with log.open("ab") as sink:
        return subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_profiler(proc: subprocess.Popen) -> None:
    """SIGINT makes py-spy write its output; kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _frame_function(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (path/file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize_profile(
    path: Path, top: int = 15
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Samples, top self-time and top inclusive functions (% of samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for function in set(frames):
            inclusive[function] += n
    if not total:
        return 0, [], []

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, 100.0 * c / total) for f, c in counter.most_common(top)]

    return total, pct(own), pct(inclusive)


# ---------------------------------------------------------------- freshness poller


def freshness_poller(
    home: str,
    redis_url: str,
    inbox: Any,
    outbox: Any,
    poll_seconds: float,
    drain_seconds: float,
) -> None:
    """Child process: read sampled events back through Feast until visible."""
    os.environ["SEGSCORE_HOME"] = home
    from core.store.feast_config import feature_store
    from infra.settings import get_settings

    store = feature_store(get_settings(), redis_url)
    store.get_online_features(features=[FEATURE], entity_rows=[{"user_id": "warm"}])
    outbox.put({"ready": True})

    pending: dict[str, list[tuple[float, float]]] = {}
    latencies: list[tuple[float, float]] = []  # (sent at, seconds to visible)
    read_seconds: list[float] = []
    cycles: list[float] = []
    deadline: float | None = None
    last_cycle = time.time()
    while True:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                deadline = time.time() + drain_seconds
            else:
                uid, ts, sent_at = item
                pending.setdefault(uid, []).append((ts, sent_at))
        if deadline is not None and (not pending or time.time() > deadline):
            break
        if not pending:
            time.sleep(0.005)
            continue
        # The oldest pending samples only: bounded reads keep the poller from
        # competing with the worker for CPU when the worker falls behind.
        uids = list(itertools.islice(pending, POLL_MAX_USERS))
        t_read = time.time()
        blobs = store.get_online_features(
            features=[FEATURE], entity_rows=[{"user_id": u} for u in uids]
        ).to_dict()["state"]
        values = [UserState.from_bytes(b).last_event_ts for b in blobs]
        seen = time.time()
        read_seconds.append(seen - t_read)
        cycles.append(seen - last_cycle)
        last_cycle = seen
        for uid, value in zip(uids, values, strict=True):
            if value is None:
                continue
            waiting = [s for s in pending[uid] if value < s[0] - TS_TOLERANCE]
            latencies.extend(
                (sent, seen - sent)
                for ts, sent in pending[uid]
                if ts <= value + TS_TOLERANCE
            )
            if waiting:
                pending[uid] = waiting
            else:
                del pending[uid]
        time.sleep(max(0.0, poll_seconds - (time.time() - t_read)))
    end = time.time()
    outbox.put(
        {
            "latencies": latencies,
            # Never seen: how long they had waited when the poller gave up.
            "unresolved": [
                (sent, end - sent) for v in pending.values() for _, sent in v
            ],
            "read_ms_mean": 1000 * float(np.mean(read_seconds)) if read_seconds else 0,
            "cycle_ms_mean": 1000 * float(np.mean(cycles[1:]))
            if len(cycles) > 1
            else 0,
        }
    )


async def paced_produce(
    broker: str,
    topic: str,
    rate: int,
    duration: float,
    users: int,
    seed: int,
    samples: Any,
    samples_per_second: int = SAMPLES_PER_SECOND,
) -> dict[str, float]:
    """Send ``rate`` events/s for ``duration`` s; hand sampled ones to the poller."""
    from aiokafka import AIOKafkaProducer

    total = max(1, int(rate * duration))
    rng = np.random.default_rng(seed)
    uids = [bench_user(i) for i in rng.integers(0, users, size=total).tolist()]
    # Built ahead (valid events as wire dicts); only ts is set at send time.
    payloads = [
        orjson.loads(e.to_json())
        for e in EventFactory(seed + 1).batch(uids, [0.0] * total)
    ]
    stride = max(1, round(rate / samples_per_second))
    recent: dict[str, float] = {}
    want_sample = False
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=1, acks="all")
    await producer.start()
    futures = []
    sent = 0
    try:
        t0 = last = time.time()
        while sent < total:
            due = min(total, int((time.time() - t0) * rate) + 1) - sent
            for _ in range(due):
                uid, payload = uids[sent], payloads[sent]
                now = time.time()
                payload["ts"] = ts_ms = round(now * 1000)
                futures.append(
                    await producer.send(
                        topic, key=uid.encode(), value=orjson.dumps(payload)
                    )
                )
                want_sample = want_sample or sent % stride == 0
                if want_sample and recent.get(uid, 0.0) < now - 1.0:
                    samples.put((uid, ts_ms / 1000, now))
                    recent[uid] = now
                    want_sample = False
                sent += 1
            last = time.time()
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {"sent": sent, "seconds": max(last - t0, 1e-9)}


# ------------------------------------------------------------------------ the run


@contextlib.contextmanager
def bench_environment(
    keep: bool,
    prefix: str,
    cleared: Sequence[str],
    restored: Sequence[str] = (),
    keep_logs_on: type[BaseException] = Exception,
) -> Iterator[Path]:
    """A temporary ``SEGSCORE_HOME``; the environment is restored afterwards.

    Args:
        keep: Keep the home (its logs) after a clean run too.
        prefix: Name prefix of the temporary directory.
        cleared: Variables removed for the run (e.g. an external Redis URL), so
            the bench starts its own services.
        restored: Variables the run may set, put back as they were afterwards.
        keep_logs_on: Failures after which the home is kept: its logs tell what
            went wrong.
    """
    names = dict.fromkeys(("SEGSCORE_HOME", *cleared, *restored))
    saved = {name: os.environ.get(name) for name in names}
    home = Path(tempfile.mkdtemp(prefix=prefix))
    for name in cleared:
        os.environ.pop(name, None)
    os.environ["SEGSCORE_HOME"] = str(home)
    keep_logs = keep
    try:
        yield home
    except keep_logs_on:
        keep_logs = True
        raise
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not keep_logs:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the cleanup runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def machine_info() -> str:
    """One line: OS, CPU model and Python."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.platform()} | {cpu} | "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def run_bench(config: BenchConfig, console: Console) -> dict[str, Any]:
    """Run both measurements on a private stack (see :func:`flat` for JSON)."""
    with (
        _sigterm_as_interrupt(),
        bench_environment(
            config.keep_home,
            "segscore-bench-",
            cleared=("SEGSCORE_REDIS_URL", "SEGSCORE_KAFKA_BROKER"),
            restored=("SEGSCORE_BATCH_MAX_EVENTS", "SEGSCORE_BATCH_MAX_SECONDS"),
        ) as home,
    ):
        return _run(config, console, home)


def _run(config: BenchConfig, console: Console, home: Path) -> dict[str, Any]:
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra import local_stack, processes
    from infra.settings import get_settings
    from infra.topics import ensure_topics

    extra_env: dict[str, str] = {}
    if config.batch_max_events is not None:
        extra_env["SEGSCORE_BATCH_MAX_EVENTS"] = str(config.batch_max_events)
    if config.batch_max_seconds is not None:
        extra_env["SEGSCORE_BATCH_MAX_SECONDS"] = str(config.batch_max_seconds)
    os.environ.update(extra_env)
    settings = get_settings()
    users = max(1, min(config.users, config.events))
    result: dict[str, Any] = {
        "events": config.events,
        "users": users,
        "offered_rate": config.rate,
        "duration_s": config.duration,
        "worker_batch_max_events": settings.batch_max_events,
        "worker_batch_max_seconds": settings.batch_max_seconds,
        "topic_partitions": settings.topic_partitions,
        "cpu_count": os.cpu_count(),
        "machine": machine_info(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    console.print(f"bench home {home}")
    worker = profiler = poller = None
    try:
        stack = local_stack.up(settings)
        ensure_topics(stack.kafka_broker, settings)
        store = feature_store(settings, stack.redis_url)
        apply_repo(store)
        layout = StateLayout.of(store)
        client = redis.Redis.from_url(stack.redis_url, socket_timeout=5.0)
        stack_pids = {s.name: s.pid for s in stack.started}

        with console.status(f"producing a backlog of {config.events} events"):
            events = backlog_events(config.events, users, time.time() - 60, config.seed)
            t_produce = time.monotonic()
            partitions = asyncio.run(
                produce_backlog_async(stack.kafka_broker, settings.events_topic, events)
            )
            result["backlog_produce_s"] = round(time.monotonic() - t_produce, 2)
        tracker = BacklogTracker(client, layout, events, partitions)

        # From before the worker process exists to the first of its state writes
        # that Redis shows: start-up, imports, group join and the first batch.
        started = time.monotonic()
        worker = processes.start_worker(settings, name="bench-worker")
        worker_log = home / "logs" / "bench-worker.log"
        crash_watch = CrashWatch(worker_log)
        meter = CpuMeter({"worker": worker.pid, **stack_pids})
        timeout = 120 + config.events / 500
        t_first = applied_first = None
        t_before = started  # the last poll that saw nothing applied
        timeline: list[tuple[float, int]] = []
        with console.status("worker reading the backlog"):
            while not tracker.complete:
                if worker.poll() is not None:
                    raise BenchError(f"worker exited:\n{_tail(worker_log)}")
                crash = crash_watch.crashed()
                if crash:
                    raise BenchError(f"the worker's agent crashed: {crash}")
                if time.monotonic() - started > timeout:
                    raise BenchError(
                        f"backlog not applied after {timeout:.0f}s "
                        f"({sum(tracker.applied)}/{config.events})"
                    )
                polled = time.monotonic()
                applied = tracker.poll()
                now = time.monotonic()
                if not applied:
                    t_before = polled
                if applied and t_first is None:
                    t_first, applied_first = now, applied
                    meter.begin()
                    if config.profile is not None:
                        profiler = start_profiler(
                            worker.pid, config.profile, home / "logs" / "py-spy.log"
                        )
                if applied and (not timeline or timeline[-1][1] != applied):
                    timeline.append((now, applied))
                if not tracker.complete:
                    time.sleep(BACKLOG_POLL_SECONDS)
        t_done = time.monotonic()
        assert t_first is not None and applied_first is not None
        result["backlog_cpu"] = meter.end()
        if profiler is not None:
            stop_profiler(profiler)
            profiler = None
        result["worker_start_to_first_write_s"] = round(t_first - started, 2)
        lower_bound = applied_first >= config.events
        if lower_bound:
            # All applied between two polls: all we know is an upper bound of time.
            seconds, counted = t_done - t_before, config.events
        else:
            seconds, counted = t_done - t_first, config.events - applied_first
        seconds = max(seconds, 1e-9)
        result["backlog_apply_s"] = round(seconds, 3)
        result["events_per_s"] = round(counted / seconds, 1)
        result["events_per_s_lower_bound"] = lower_bound
        result["events_per_s_steady"] = _steady_rate(timeline, config.events)
        wrong = verify_states(client, layout, events)
        result["states_wrong"] = wrong
        if wrong:
            raise BenchError(f"{wrong} users' states do not end at their last event")
        console.print(
            f"backlog: {config.events} events in {seconds:.2f}s "
            f"-> {result['events_per_s']:.0f} events/s"
        )

        with console.status("a bare consumer reading the same backlog"):
            raw = asyncio.run(
                raw_consume_async(
                    stack.kafka_broker,
                    settings.events_topic,
                    Counter(partitions),
                    settings.batch_max_events,
                    settings.consumer_fetch_max_wait_ms,
                    timeout,
                )
            )
        result["raw_consumer_events_per_s"] = round(raw["events_per_s"], 1)
        result["worker_share_of_raw"] = round(
            result["events_per_s"] / raw["events_per_s"], 3
        )
        console.print(
            f"bare consumer (fetch + orjson.loads): "
            f"{raw['events_per_s']:.0f} events/s; "
            f"the worker did {result['worker_share_of_raw']:.0%} of that"
        )

        ctx = mp.get_context("spawn")
        inbox, outbox = ctx.Queue(), ctx.Queue()
        poller = ctx.Process(
            target=freshness_poller,
            args=(
                str(home),
                stack.redis_url,
                inbox,
                outbox,
                FRESHNESS_POLL_SECONDS,
                30.0,
            ),
            daemon=True,
        )
        poller.start()
        _get(outbox, poller, 120, "the freshness poller to start")
        meter.begin()
        with console.status(
            f"producing {config.rate} events/s for {config.duration:g}s"
        ):
            produced = asyncio.run(
                paced_produce(
                    stack.kafka_broker,
                    settings.events_topic,
                    config.rate,
                    config.duration,
                    users,
                    config.seed + 100,
                    inbox,
                )
            )
        result["freshness_cpu"] = meter.end()
        inbox.put(None)
        with console.status("waiting for the last sampled events"):
            fresh = _get(outbox, poller, 90, "freshness results")
        poller.join(timeout=10)
        if worker.poll() is not None:
            raise BenchError(f"worker exited:\n{_tail(worker_log)}")
        crash = crash_watch.crashed()
        if crash:
            raise BenchError(f"the worker's agent crashed: {crash}")
        result["achieved_rate"] = round(produced["sent"] / produced["seconds"], 1)
        result["freshness_unresolved"] = len(fresh["unresolved"])
        result["freshness_read_ms"] = round(fresh["read_ms_mean"], 2)
        result["freshness_poll_cycle_ms"] = round(fresh["cycle_ms_mean"], 2)
        if not fresh["latencies"]:
            raise BenchError("no sampled event became visible through Feast")
        # Unresolved samples count with their wait so far: percentiles stay honest
        # (lower bounds) when the worker could not keep up.
        result.update(freshness_stats(fresh["latencies"] + fresh["unresolved"]))
        if config.profile is not None:
            samples, own, inclusive = summarize_profile(config.profile)
            result["profile"] = str(config.profile)
            result["profile_samples"] = samples
            result["profile_top_self"] = ", ".join(f"{f} {p:.1f}%" for f, p in own[:8])
            print_profile(console, samples, own, inclusive)
        return result
    except BenchError:
        if worker is not None:
            tail = _tail(home / "logs" / "bench-worker.log", 15)
            console.print(f"worker log tail:\n{tail}")
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        if poller is not None and poller.is_alive():
            poller.terminate()
            poller.join(timeout=5)
        if worker is not None:
            processes.stop(worker)
        with contextlib.suppress(Exception):
            local_stack.down(settings)


def freshness_stats(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Percentiles of (sent at, seconds to visible) samples, and their trend.

    The trend is the least-squares slope of freshness over send time: near 0 when
    the worker keeps up with the offered rate, about (1 - capacity / rate) * 1000 ms
    per second when it does not.
    """
    sent = np.array([p[0] for p in pairs], dtype=float)
    ms = np.array([p[1] for p in pairs], dtype=float) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    trend = float(np.polyfit(sent - sent.min(), ms, 1)[0]) if len(ms) > 2 else 0.0
    return {
        "freshness_samples": len(ms),
        "freshness_p50_ms": round(float(p50), 1),
        "freshness_p90_ms": round(float(p90), 1),
        "freshness_p99_ms": round(float(p99), 1),
        "freshness_max_ms": round(float(ms.max()), 1),
        "freshness_trend_ms_per_s": round(trend, 1),
    }


def _get(box: Any, proc: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return box.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                raise BenchError(
                    f"the poller process died waiting for {what}"
                ) from None
    raise BenchError(f"timed out waiting for {what}")


def _steady_rate(timeline: list[tuple[float, int]], total: int) -> float | None:
    """Events/s between 10 % and 90 % of the backlog (no start-up or tail)."""
    lo = next((p for p in timeline if p[1] >= 0.1 * total), None)
    hi = next((p for p in timeline if p[1] >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)


def print_profile(
    console: Console,
    samples: int,
    own: list[tuple[str, float]],
    inclusive: list[tuple[str, float]],
    subject: str = "worker",
) -> None:
    """A py-spy summary as two tables: self time and inclusive time per function."""
    for title, rows in (("self", own), ("inclusive", inclusive)):
        table = Table(
            title=f"{subject} profile, {title} time ({samples} GIL-holding samples)"
        )
        table.add_column("function", overflow="fold")
        table.add_column("%", justify="right")
        for function, pct in rows:
            table.add_row(function, f"{pct:.1f}")
        console.print(table)


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The result as a two-column table."""
    table = Table(title="segscore bench stream")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    for key, value in result.items():
        if key in ("profile_top_self",):
            continue
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    console.print(table)


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """The result with nested CPU shares spread into top-level keys."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for name, share in value.items():
                out[f"{key}_{name}"] = share
        else:
            out[key] = value
    return out
