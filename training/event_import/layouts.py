"""Source layouts and the mappings that turn their columns into contract fields.

Every layout reduces to a :class:`Mapping` (source columns -> contract fields): the
``native`` identity, the public "eCommerce behavior data" layout, plain transaction
logs found by their column names, or a YAML/JSON mapping file. :func:`detect_layout`
tells the built-in layouts apart by their columns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.event_files import COLUMNS
from core.events import EventType

LAYOUTS = ("native", "ecommerce", "transactions", "mapping")
EVENT_TYPES = tuple(t.value for t in EventType)
REQUIRED = ("event_id", "user_id", "event_type", "ts")
ID_FIELDS = ("event_id", "user_id")
TEXT_FIELDS = ("session_id", "product_id", "category", "device", "channel", "country")
FLOAT_FIELDS = ("price", "revenue")
TS_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


class ImportFailed(Exception):
    """The file as a whole cannot be imported (unreadable, unknown layout...)."""


@dataclass(frozen=True)
class Mapping:
    """How one source layout becomes contract events.

    Attributes:
        columns: Source column -> contract field. Several source columns may feed
            one field; the first non-empty one wins (in the order given).
        event_types: Source event name -> contract event type; ``None`` skips rows
            of that name on purpose (counted in the summary, not reported as bad).
            Names not listed pass through and must already be contract types.
        ts_format: ``strptime`` format of the time column (e.g. ``%d/%m/%Y %H:%M``).
        ts_unit: The time column holds epoch numbers in this unit (s, ms, us, ns).
        ts_auto: Let pandas infer the date format (plain transaction logs).
        timezone: Zone of times that carry none (default: such times are invalid
            in the wire rule, UTC for ``ts_format``/``ts_auto``).
        dayfirst: For ``ts_auto``: 01/02/2024 is 1 February.
        constants: Contract field -> value for every row (e.g. event_type).
        defaults: Contract field -> value where the source cell is empty.
        strict_types: Apply the contract's types literally (the native layout): a
            number where text is expected is invalid. Otherwise ids and codes that
            arrive as numbers become text.
        header: CSV column names of a file without a header line (None: the
            first line names the columns).
        delimiter: CSV field separator: one character or ``whitespace`` (runs of
            spaces and tabs); None: sniffed from the file.
        encoding: CSV text encoding.
    """

    columns: dict[str, str]
    event_types: dict[str, str | None] = field(default_factory=dict)
    ts_format: str | None = None
    ts_unit: str | None = None
    ts_auto: bool = False
    timezone: str | None = None
    dayfirst: bool = False
    constants: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    strict_types: bool = False
    header: tuple[str, ...] | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"


ECOMMERCE_EVENTS: dict[str, str | None] = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}

ECOMMERCE = Mapping(
    columns={
        "event_time": "ts",
        "event_type": "event_type",
        "product_id": "product_id",
        "category_code": "category",
        "category_id": "category",  # fallback where category_code is empty
        "price": "price",
        "user_id": "user_id",
        "user_session": "session_id",
    },
    event_types=ECOMMERCE_EVENTS,
    ts_format="%Y-%m-%d %H:%M:%S UTC",
)

# Column-name variants of plain transaction logs, compared without case, spaces,
# dashes or underscores; within a role, earlier variants win.
TRANSACTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (
        "customerid", "customer", "custid", "cust", "customerkey", "customerno",
        "customernumber", "customercode", "clientid", "client", "userid", "user",
        "memberid", "member", "householdkey", "householdid", "household",
        "shopperid", "shopper", "buyerid", "buyer", "accountid", "account",
        "loyaltyid", "cardid", "visitorid", "visitor",
        "id",  # last: only when nothing else names the customer (CDNOW's layout)
    ),
    "ts": (
        "date", "invoicedate", "orderdate", "transactiondate", "purchasedate",
        "datetime", "timestamp", "transactiontimestamp", "transactiontime",
        "orderdatetime", "ordertime", "purchasetime", "orderedat", "purchasedat",
        "time", "createdat", "ts", "txdate", "transdate", "saledate", "salesdate",
        "dt",
    ),
    "revenue": (
        "amount", "total", "totalamount", "revenue", "sales", "salesvalue",
        "salesamount", "totalsales", "netsales", "value", "dollarvalue", "dollars",
        "ordervalue", "spend", "amountspent", "ordertotal", "saleamount",
        "purchaseamount", "monetary", "monetaryvalue", "linetotal", "totalprice",
        "amountpaid", "paid",
    ),
    "price": ("unitprice", "price", "itemprice", "priceeach", "unitcost"),
    "quantity": (
        "quantity", "qty", "units", "unitssold", "numberofunits", "numberofitems",
        "numberofcds", "numitems", "itemcount", "pieces",
    ),
    "product_id": (
        "productid", "stockcode", "sku", "itemid", "product", "item", "productcode",
        "itemcode", "articleid", "article", "upc",
    ),
    "session_id": (
        "invoice", "invoiceno", "invoicenumber", "invoiceid", "orderid", "orderno",
        "ordernumber", "order", "transactionid", "transactionno", "receipt",
        "receiptid", "basketid", "basket", "tripid",
    ),
    "country": ("country",),
    "channel": ("channel",),
}  # fmt: skip

# Columns (compared as above) that name each row's event: a clickstream.
EVENT_COLUMNS = frozenset({"event", "events", "eventtype", "eventname", "action"})

# What a transaction log must have, by role: a customer, a date, an amount (or a
# unit price), as the user would name them.
TRANSACTION_ROLES: dict[str, tuple[str, ...]] = {
    "customer": ("user_id",),
    "date": ("ts",),
    "amount (or unit price)": ("revenue", "price"),
}


_DATA_LIKE = re.compile(r"^[-+]?[\d.,:/ ]+$")


def _norm_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _transaction_columns(columns: Iterable[str]) -> dict[str, str]:
    """Source column -> contract field for the columns recognised by name."""
    by_norm: dict[str, str] = {}
    for column in columns:
        by_norm.setdefault(_norm_name(column), column)
    chosen: dict[str, str] = {}
    for target, variants in TRANSACTION_COLUMNS.items():
        for variant in variants:
            if variant in by_norm and by_norm[variant] not in chosen:
                chosen[by_norm[variant]] = target
                break
    return chosen


def missing_transaction_roles(columns: Iterable[str]) -> list[str]:
    """The roles (customer, date, amount) that no column name here fills."""
    targets = set(_transaction_columns(columns).values())
    return [
        role for role, fields in TRANSACTION_ROLES.items() if not targets & set(fields)
    ]


def _explain_missing(columns: list[str]) -> str:
    missing = missing_transaction_roles(columns)
    names = {
        "customer": "customer_id, user_id, client, member, household_key",
        "date": "date, order_date, InvoiceDate, datetime, timestamp",
        "amount (or unit price)": "amount, revenue, sales, sales_value, total, "
        "dollar_value, price",
    }
    found = ", ".join(f"{role} (e.g. {names[role]})" for role in missing)
    text = f"missing {found}; columns seen: {', '.join(columns[:30])}"
    if columns and all(_DATA_LIKE.match(c) for c in columns):
        text += (
            " (the first line looks like data: a file without a header line needs "
            "'header: [names...]' in a --mapping file)"
        )
    return text


def transactions_mapping(columns: Iterable[str]) -> Mapping | None:
    """The mapping for a transaction log with these columns, or None if not one."""
    cols = list(columns)
    if missing_transaction_roles(cols):
        return None
    chosen = _transaction_columns(cols)
    return Mapping(columns=chosen, constants={"event_type": "purchase"}, ts_auto=True)


def native_mapping(columns: Iterable[str]) -> Mapping:
    """The identity mapping over the contract columns present."""
    return Mapping(columns={c: c for c in columns if c in COLUMNS}, strict_types=True)


def detect_layout(columns: Iterable[str]) -> str:
    """Which built-in layout these source columns are: native, ecommerce or
    transactions. Raises :class:`ImportFailed` if none fits (use a mapping file)."""
    cols = list(columns)
    names = set(cols)
    if {"event_time", "event_type", "user_id"} <= names:
        return "ecommerce"
    if {"user_id", "event_type", "ts"} <= names:
        return "native"
    events = [c for c in cols if _norm_name(c) in EVENT_COLUMNS]
    if events:
        # Every row of a transaction log is a purchase; a log that names its
        # events is a clickstream, whatever its other columns.
        raise ImportFailed(
            f"unknown layout: column {events[0]!r} names events, so this looks like "
            "a clickstream, not a transaction log; describe it with a --mapping "
            "file (columns and event_types, see the example in docs/importing.md)"
            f"; columns seen: {', '.join(cols[:30])}"
        )
    if transactions_mapping(cols) is not None:
        return "transactions"
    raise ImportFailed(
        "unknown layout: not native (user_id, event_type, ts), not ecommerce "
        "(event_time, event_type, user_id), and as a transaction log "
        f"{_explain_missing(cols)}. Pass --layout or a --mapping file (see "
        "docs/importing.md); a file read as one column may need --delimiter"
    )


def load_mapping(path: Path) -> Mapping:
    """Read a YAML or JSON mapping file (format in docs/importing.md)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml  # only mapping files need it

        data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise ImportFailed(f"{path}: a mapping needs a 'columns' table")
    columns = {str(k): str(v) for k, v in data["columns"].items()}
    unknown = sorted(set(columns.values()) - set(COLUMNS))
    if unknown:
        raise ImportFailed(
            f"{path}: columns must map source column -> contract field; "
            f"not contract fields: {unknown} (fields: {', '.join(COLUMNS)})"
        )
    events = {str(k): (None if v is None else str(v)) for k, v in
              (data.get("event_types") or {}).items()}  # fmt: skip
    bad_events = sorted({v for v in events.values() if v and v not in EVENT_TYPES})
    if bad_events:
        raise ImportFailed(f"{path}: unknown contract event types {bad_events}")
    stamp = data.get("timestamp") or {}
    if isinstance(stamp, str):  # shorthand: timestamp: "%d/%m/%Y %H:%M"
        stamp = {"format": stamp}
    unit = stamp.get("unit")
    if unit is not None and unit not in TS_UNITS:
        raise ImportFailed(f"{path}: timestamp unit must be one of {list(TS_UNITS)}")
    for section in ("constants", "defaults"):
        extra = sorted(set(data.get(section) or {}) - set(COLUMNS))
        if extra:
            raise ImportFailed(f"{path}: {section} names unknown fields {extra}")
    return Mapping(
        columns=columns,
        event_types=events,
        ts_format=stamp.get("format"),
        ts_unit=unit,
        # A zone or day-first hint without a format means: infer the format.
        ts_auto=bool(
            stamp.get("auto")
            or (
                not stamp.get("format")
                and unit is None
                and ("timezone" in stamp or "dayfirst" in stamp)
            )
        ),
        timezone=stamp.get("timezone"),
        dayfirst=bool(stamp.get("dayfirst", False)),
        constants=dict(data.get("constants") or {}),
        defaults=dict(data.get("defaults") or {}),
        header=_mapping_header(path, data.get("header")),
        delimiter=_mapping_delimiter(path, data.get("delimiter")),
        encoding=str(data.get("encoding", "utf-8")),
    )


def _mapping_header(path: Path, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or len(set(map(str, value))) != len(value)
    ):
        raise ImportFailed(f"{path}: header must be a list of distinct column names")
    return tuple(str(v) for v in value)


def _mapping_delimiter(path: Path, value: Any) -> str | None:
    from training.event_import.formats import delimiter_option  # imports this module

    try:
        return delimiter_option(None if value is None else str(value))
    except ImportFailed as exc:
        raise ImportFailed(f"{path}: {exc}") from None


def mapping_for(layout: str, columns: list[str], mapping: Mapping | None) -> Mapping:
    """The mapping that a layout name stands for, given the source columns."""
    if layout == "mapping":
        if mapping is None:
            raise ImportFailed("layout 'mapping' needs --mapping FILE")
        return mapping
    if layout == "native":
        return native_mapping(columns)
    if layout == "ecommerce":
        return ECOMMERCE
    if layout == "transactions":
        found = transactions_mapping(columns)
        if found is None:
            raise ImportFailed(
                f"layout 'transactions': {_explain_missing(columns)}. Rename the "
                "column or describe the file with a --mapping file "
                "(see docs/importing.md)"
            )
        return found
    raise ImportFailed(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
