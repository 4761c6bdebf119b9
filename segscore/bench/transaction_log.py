"""A generated plain transaction log (customer id, date, amount, quantity) for benches.

The shape of a real shop's purchase log: customers are acquired at a steady rate
over the period, and each then buys as the BG/NBD story has it (Fader, Hardie &
Lee 2005): purchases at a personal Poisson rate (gamma across customers) until,
after any purchase, the customer drops out with a personal probability (beta
across customers). Dates are whole days, as such logs give them. The defaults --
50k customers over two years -- give about 150k transactions, the size the
training acceptance names.

``python -m segscore.bench.transaction_log OUT.csv`` writes one;
``python -m segscore.bench.transaction_log --train [--json PATH]`` also times the
whole training run on it (import, backfill, training sets, both models) in one
fresh child process, against :data:`TARGET_SECONDS` and :data:`TARGET_RSS_MB`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

DAY = 86_400
# The acceptance for a 50k-customer, two-year log (about 150k transactions).
TARGET_SECONDS = 20.0
TARGET_RSS_MB = 2048.0


@dataclass(frozen=True)
class TransactionLogConfig:
    """What to generate.

    Attributes:
        customers: Customers, each with at least one transaction.
        days: Length of the log in days, ending yesterday (UTC).
        seed: Random seed; the same config gives the same file.
        rate_shape: Gamma shape of the purchase rates (r).
        rate_scale_days: Gamma scale of the purchase rates, per day (1 / alpha).
        dropout_a: Beta ``a`` of the drop-out probabilities.
        dropout_b: Beta ``b`` of the drop-out probabilities.
    """

    customers: int = 50_000
    days: int = 730
    seed: int = 12
    rate_shape: float = 0.9
    rate_scale_days: float = 1 / 80
    dropout_a: float = 0.7
    dropout_b: float = 2.5


def transaction_times(
    config: TransactionLogConfig, end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Customer index and time (epoch seconds) of every transaction, by round.

    Args:
        config: What to generate.
        end: The log's last instant, epoch seconds.

    Returns:
        Two equal-length arrays: customer (0-based) and transaction time.
    """
    rng = np.random.default_rng(config.seed)
    n = config.customers
    start = end - config.days * DAY
    t = rng.uniform(start, end, n)
    rate = rng.gamma(config.rate_shape, config.rate_scale_days, n) / DAY
    dropout = rng.beta(config.dropout_a, config.dropout_b, n)
    customers, times = [np.arange(n)], [t.copy()]
    active = np.arange(n)
    # One round per purchase: vectorised over the customers still buying.
    while len(active):
        stays = rng.random(len(active)) >= dropout[active]
        active = active[stays]
        t[active] += rng.exponential(1.0, len(active)) / np.maximum(rate[active], 1e-12)
        active = active[t[active] <= end]
        customers.append(active)
        times.append(t[active].copy())
    return np.concatenate(customers), np.concatenate(times)


def transaction_table(
    config: TransactionLogConfig, end: float | None = None
) -> pa.Table:
    """The log as a table: customer_id, date (YYYY-MM-DD), amount, quantity.

    Rows are in date order (customers interleaved), as a shop's export would be.

    Args:
        config: What to generate.
        end: The log's last instant, epoch seconds; default the end of yesterday
            (UTC), so that nothing lies in the future.

    Returns:
        The table.
    """
    if end is None:
        end = (time.time() // DAY) * DAY - 1
    customer, ts = transaction_times(config, end)
    rng = np.random.default_rng(config.seed + 1)
    order = np.argsort(ts, kind="stable")
    customer, ts = customer[order], ts[order]
    # Spend per customer varies more than spend per order of one customer.
    typical = rng.gamma(3.0, 15.0, config.customers)
    quantity = 1 + rng.poisson(0.8, len(ts))
    amount = np.round(
        typical[customer] * rng.gamma(8.0, 1 / 8.0, len(ts)) * quantity, 2
    )
    dates = ts.astype("datetime64[s]").astype("datetime64[D]").astype(str)
    return pa.table(
        {
            "customer_id": pa.array(np.char.add("C", (100_000 + customer).astype(str))),
            "date": pa.array(dates),
            "amount": pa.array(amount),
            "quantity": pa.array(quantity),
        }
    )


def write_transaction_log(
    path: Path, config: TransactionLogConfig, end: float | None = None
) -> int:
    """Write the log as CSV to ``path``.

    Args:
        path: Where the CSV goes.
        config: What to generate.
        end: As for :func:`transaction_table`.

    Returns:
        The number of transactions written.
    """
    table = transaction_table(config, end)
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, path)
    return table.num_rows


def _train_child(home: str, csv: str, box: Any) -> None:
    """Child process: import the log and run the training pipeline on it."""
    os.environ["SEGSCORE_HOME"] = home
    warnings.filterwarnings("ignore")  # library notices would bury the numbers
    from core.event_files import read_events
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra.settings import get_settings
    from training.event_import import import_events
    from training.pipeline import train

    settings = get_settings()
    started = time.perf_counter()
    store = feature_store(settings, "redis://127.0.0.1:1/0")  # never contacted
    apply_repo(store)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    events_path = settings.data_dir / "events.parquet"
    imported = import_events(Path(csv), events_path)
    events = read_events(events_path)
    import_s = time.perf_counter() - started
    result = train(settings, store, events, backfill_workers=settings.backfill_workers)
    box.put(
        {
            "setup_s": round(setup_s, 2),
            "import_s": round(import_s, 2),
            **{f"{k}_s": v for k, v in result.timings.items()},
            "imported_events": imported.summary.accepted,
            "users": len(result.states),
            "snapshot_rows": len(result.backfill.stream),
            "snapshots": len(result.snapshots),
            "propensity_auc": result.propensity.metrics.get("roc_auc"),
            "peak_rss_process_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        }
    )


def run_transaction_log_train(config: TransactionLogConfig) -> dict[str, Any]:
    """Generate a log, train on it in a child process, return one flat dict.

    ``seconds`` is the import and the training run (Feast registry setup, which
    does not grow with the data, is ``setup_s``); ``peak_rss_mb`` is the most the
    child held, or it and its backfill workers together (sampled every 50 ms).
    """
    from segscore.bench.harness import run_in_child

    home = Path(tempfile.mkdtemp(prefix="segscore-bench-transactions-"))
    try:
        csv = home / "transactions.csv"
        transactions = write_transaction_log(csv, config)
        result, tree_peak = run_in_child(
            _train_child,
            (str(home), str(csv)),
            died="training child exited with {exitcode}",
        )
        seconds = round(
            sum(v for k, v in result.items() if k.endswith("_s") and k != "setup_s"),
            2,
        )
        # The child's own peak, or the sampled tree's (its backfill workers too).
        peak = round(max(tree_peak, result["peak_rss_process_mb"]), 1)
        return {
            "customers": config.customers,
            "days": config.days,
            "transactions": transactions,
            "seconds": seconds,
            "peak_rss_mb": peak,
            "target_seconds": TARGET_SECONDS,
            "target_rss_mb": TARGET_RSS_MB,
            "meets_targets": seconds <= TARGET_SECONDS and peak <= TARGET_RSS_MB,
            **result,
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Write a log, or time training on one (``--train``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--customers", type=int, default=TransactionLogConfig.customers)
    parser.add_argument("--days", type=int, default=TransactionLogConfig.days)
    parser.add_argument("--seed", type=int, default=TransactionLogConfig.seed)
    parser.add_argument("--train", action="store_true", help="time training on it")
    parser.add_argument("--json", type=Path, help="write the --train result here")
    args = parser.parse_args(argv)
    config = TransactionLogConfig(
        customers=args.customers, days=args.days, seed=args.seed
    )
    if args.train:
        result = run_transaction_log_train(config)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json is not None:
            args.json.write_text(text + "\n")
        return
    if args.out is None:
        parser.error("give OUT.csv or --train")
    rows = write_transaction_log(args.out, config)
    print(f"{rows} transactions of {config.customers} customers -> {args.out}")


if __name__ == "__main__":
    main()
