"""segscore import on logs as they come: gzip, delimiters given or sniffed (whitespace
too), column aliases of real transaction logs, and messages that say what to do."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from training.event_import import ImportFailed, import_events
from training.event_import.formats import (
    WHITESPACE,
    delimiter_option,
    is_gzip,
    sniff_delimiter,
)
from training.event_import.layouts import (
    detect_layout,
    missing_transaction_roles,
    transactions_mapping,
)
from training.event_import.validation import NO_REVENUE

NOW = 1_800_000_000.0  # 2027-01-15

# The CDNOW log as the lifetimes package ships it: a header led by a space, runs of
# spaces between fields, CRLF line ends, dates as YYYYMMDD.
CDNOW = (
    " customer_id  date number_of_cds  dollar_value\r\n"
    " 00001 19970101  1   11.77\r\n"
    " 00002 19970112  1   12.00\r\n"
    " 00002 19970112  5   77.00\r\n"
    " 00003 19970102  2\r\n"  # a field short
    " 00003 19970330  2   20.76\r\n"
)
ONLINE_RETAIL = (
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,"
    "Country\n"
    '536365,85123A,"WHITE HANGING HEART T-LIGHT HOLDER",6,12/1/2010 8:26,2.55,17850,'
    "United Kingdom\n"
    '536365,71053,"WHITE METAL LANTERN, LARGE",6,12/1/2010 8:26,3.39,17850,'
    "United Kingdom\n"
    "536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,,United Kingdom\n"
    "C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527,United Kingdom\n"
)
COMPLETE_JOURNEY = (
    "household_key,store_id,basket_id,product_id,quantity,sales_value,retail_disc,"
    "week,transaction_timestamp\n"
    "900,330,31198570044,1095275,1,0.5,0.0,1,2017-01-01 11:53:26\n"
    "900,330,31198570047,9878513,1,0.99,0.1,1,2017-01-01 12:10:28\n"
    "1228,406,31198655051,1041453,0,0.0,0.0,1,2017-01-01 12:26:30\n"
    "906,319,31198705046,1020156,2,1.5,0.39,1,2017-01-01 12:30:27\n"
)
CLICKS_MAPPING = """
columns:
  visitor: user_id
  event: event_type
  when: ts
event_types:
  view: product_view
  buy: purchase
timestamp:
  unit: s
"""


def _run(path: Path, tmp_path: Path, **kwargs: object):
    out = tmp_path / "out" / "events.parquet"
    return import_events(path, out, now=NOW, min_ts=0, **kwargs)  # type: ignore[arg-type]


def _gzip(path: Path, text: str, name: str | None = None) -> Path:
    target = path.with_name(name or path.name + ".gz")
    target.write_bytes(gzip.compress(text.encode()))
    return target


def _same_import(plain: Path, packed: Path, tmp_path: Path) -> None:
    first, second = _run(plain, tmp_path), _run(packed, tmp_path)
    assert first.events.drop(["event_id"]).equals(second.events.drop(["event_id"]))
    assert first.bad[["line", "reason"]].equals(second.bad[["line", "reason"]])
    assert first.events.num_rows > 0


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".jsonl"])
def test_gzip_by_suffix_imports_like_the_plain_file(
    tmp_path: Path, suffix: str
) -> None:
    if suffix == ".jsonl":
        rows = [
            {"user_id": "u1", "event_type": "page_view", "ts": 1_700_000_000},
            {"user_id": "u2", "event_type": "teleport", "ts": 1_700_000_001},
            {"user_id": "u2", "event_type": "purchase", "ts": 1_700_000_002,
             "revenue": 9.5},
        ]  # fmt: skip
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = (
            sep.join(["customer_id", "date", "amount"])
            + "\n"
            + "".join(
                sep.join(row) + "\n"
                for row in [
                    ("c1", "2024-01-05", "19.90"),
                    ("c2", "not a date", "1"),
                    ("c1", "2024-02-01", "5"),
                ]
            )
        )
    plain = tmp_path / f"log{suffix}"
    plain.write_text(text)
    packed = _gzip(plain, text)
    assert packed.name == f"log{suffix}.gz"
    _same_import(plain, packed, tmp_path)
    header = 0 if suffix == ".jsonl" else 1  # the second row is bad in each
    assert _run(packed, tmp_path).bad["line"].tolist() == [2 + header]


def test_gzip_by_magic_bytes_without_the_suffix(tmp_path: Path) -> None:
    plain = tmp_path / "online_retail.csv"
    plain.write_text(ONLINE_RETAIL)
    packed = _gzip(plain, ONLINE_RETAIL, "retail_packed.csv")
    assert is_gzip(packed) and not is_gzip(plain)
    _same_import(plain, packed, tmp_path)


def test_a_broken_gzip_file_fails_with_its_name(tmp_path: Path) -> None:
    src = tmp_path / "log.csv.gz"
    src.write_bytes(gzip.compress(ONLINE_RETAIL.encode())[:60])
    with pytest.raises(ImportFailed, match=r"log\.csv\.gz"):
        _run(src, tmp_path, layout="transactions", delimiter=",")


def test_gzip_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"customer": ["a", "b"], "order_date": ["2024-01-01", "2024-01-02"],
         "revenue": [1.0, 2.0]}
    )  # fmt: skip
    plain = tmp_path / "tx.parquet"
    frame.to_parquet(plain)
    packed = tmp_path / "tx.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _same_import(plain, packed, tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_cdnow_whitespace_log_is_sniffed(tmp_path: Path, compress: bool) -> None:
    src = tmp_path / "CDNOW_master.txt"
    src.write_text(CDNOW, newline="")
    if compress:
        src = _gzip(src, CDNOW)
    result = _run(src, tmp_path)
    summary = result.summary
    assert (summary.layout, summary.delimiter) == ("transactions", "whitespace")
    assert result.bad[["line", "reason"]].values.tolist() == [[5, "malformed_row"]]
    events = result.events.to_pandas()
    assert events["user_id"].tolist() == ["00001", "00002", "00002", "00003"]
    assert events["revenue"].tolist() == [11.77, 12.0, 77.0, 20.76]
    assert events["quantity"].tolist() == [1, 1, 5, 2]
    assert events["ts"][0] == pd.Timestamp("1997-01-01", tz="UTC").timestamp()


def test_whitespace_given_as_option_or_in_the_mapping(tmp_path: Path) -> None:
    src = tmp_path / "cdnow.dat"
    src.write_text("id date qty amount\n7 19970101 1 11.77\n8  19970102\t2 3\n")
    by_option = _run(src, tmp_path, delimiter="whitespace")
    assert by_option.events.column("revenue").to_pylist() == [11.77, 3.0]
    mapping = tmp_path / "cdnow.yaml"
    mapping.write_text(
        "columns: {id: user_id, date: ts, amount: revenue, qty: quantity}\n"
        "constants: {event_type: purchase}\n"
        "timestamp: {format: '%Y%m%d'}\n"
        "delimiter: whitespace\n"
    )
    by_mapping = _run(src, tmp_path, mapping_path=mapping)
    assert by_mapping.events.column("quantity").to_pylist() == [1, 2]
    assert by_mapping.summary.delimiter == "whitespace"


def test_option_overrides_the_mapping_delimiter(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("customer|date|amount\nc1|2024-01-05|3\n")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "columns: {customer: user_id, date: ts, amount: revenue}\n"
        "constants: {event_type: purchase}\ntimestamp: {auto: true}\n"
        "delimiter: ';'\n"
    )
    with pytest.raises(ImportFailed, match="'customer'"):
        _run(src, tmp_path, mapping_path=mapping)
    result = _run(src, tmp_path, mapping_path=mapping, delimiter="pipe")
    assert result.events.column("revenue").to_pylist() == [3.0]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a,b,c", "1,2,3", '4,"5,5",6'], ","),
        (["a\tb c\td", "1\t2 2\t3"], "\t"),
        (["kunde;datum;betrag", "1;2024-01-01;12,50", "2;2024-01-02;3,10"], ";"),
        (["a|b", "1|x, y"], "|"),
        ([" id  date qty amount", " 1 19970101  1  11.77"], WHITESPACE),
        (["single", "1"], ","),
        ([], ","),
    ],
)
def test_sniff_delimiter(lines: list[str], expected: str) -> None:
    assert sniff_delimiter(lines) == expected


def test_delimiter_option_names_and_errors() -> None:
    assert delimiter_option("tab") == "\t"
    assert delimiter_option("Whitespace") == WHITESPACE
    assert delimiter_option(";") == ";"
    assert delimiter_option(None) is None
    with pytest.raises(ImportFailed, match="one character"):
        delimiter_option(";;")


def test_missing_roles_are_named_with_the_columns_seen(tmp_path: Path) -> None:
    src = tmp_path / "tx.csv"
    src.write_text("cust_id,when,sales_value\nc1,2024-01-01,3\n")
    with pytest.raises(ImportFailed) as failed:
        _run(src, tmp_path, layout="transactions")
    message = str(failed.value)
    assert "missing date" in message
    assert "customer (" not in message and "amount" not in message.split(";")[0]
    assert "columns seen: cust_id, when, sales_value" in message
    with pytest.raises(ImportFailed, match=r"missing date .*columns seen"):
        _run(src, tmp_path)  # auto: the transaction diagnosis too
    assert missing_transaction_roles(["x", "y"]) == [
        "customer", "date", "amount (or unit price)",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (
            ["household_key", "basket_id", "sales_value", "transaction_timestamp",
             "quantity", "product_id"],
            {"household_key": "user_id", "basket_id": "session_id",
             "sales_value": "revenue", "transaction_timestamp": "ts",
             "quantity": "quantity", "product_id": "product_id"},
        ),
        (
            ["Customer ID", "Invoice Date", "Dollar Value", "Qty"],
            {"Customer ID": "user_id", "Invoice Date": "ts",
             "Dollar Value": "revenue", "Qty": "quantity"},
        ),
        (
            ["member", "order_date", "total", "units"],
            {"member": "user_id", "order_date": "ts", "total": "revenue",
             "units": "quantity"},
        ),
        (
            ["USER", "DateTime", "price"],
            {"USER": "user_id", "DateTime": "ts", "price": "price"},
        ),
        (
            ["client", "timestamp", "revenue"],
            {"client": "user_id", "timestamp": "ts", "revenue": "revenue"},
        ),
    ],
)  # fmt: skip
def test_transaction_column_aliases(columns: list[str], expected: dict) -> None:
    assert detect_layout(columns) == "transactions"
    mapping = transactions_mapping(columns)
    assert mapping is not None and mapping.columns == expected


def test_completejourney_style_csv_gz(tmp_path: Path) -> None:
    src = _gzip(tmp_path / "transactions.csv", COMPLETE_JOURNEY)
    result = _run(src, tmp_path)
    assert result.summary.layout == "transactions"
    assert result.bad[["line", "reason"]].values.tolist() == [[4, "invalid:quantity"]]
    events = result.events.to_pandas()
    assert events["user_id"].tolist() == ["900", "900", "906"]
    assert events["session_id"].tolist() == [
        "31198570044", "31198570047", "31198705046",
    ]  # fmt: skip
    assert events["revenue"].tolist() == [0.5, 0.99, 1.5]


def test_online_retail_style_csv_gz(tmp_path: Path) -> None:
    src = _gzip(tmp_path / "Online Retail.csv", ONLINE_RETAIL)
    result = _run(src, tmp_path)
    assert result.summary.delimiter == ","
    assert result.bad[["line", "reason"]].values.tolist() == [
        [4, "missing:user_id"],
        [5, "invalid:quantity"],
    ]
    events = result.events.to_pandas()
    assert events["revenue"].tolist() == pytest.approx([6 * 2.55, 6 * 3.39])
    assert events["ts"][0] == pd.Timestamp("2010-12-01 08:26", tz="UTC").timestamp()


def test_purchase_without_a_price_says_what_to_do(tmp_path: Path) -> None:
    src = tmp_path / "clicks.csv"
    src.write_text(
        "visitor,event,when\nv1,view,1700000000\nv1,buy,1700000060\n"
        "v2,teleport,1700000100\nv2,teleport,1700000101\nv3,wish,1700000102\n"
    )
    mapping = tmp_path / "clicks.yaml"
    mapping.write_text(CLICKS_MAPPING)
    result = _run(src, tmp_path, mapping_path=mapping)
    bad = result.bad.set_index("line")
    assert bad.loc[3, "reason"] == "invalid:revenue"
    assert bad.loc[3, "detail"] == NO_REVENUE
    assert "defaults.revenue" in NO_REVENUE
    with_default = tmp_path / "clicks_default.yaml"
    with_default.write_text(CLICKS_MAPPING + "defaults:\n  revenue: 0\n")
    fixed = _run(src, tmp_path, mapping_path=with_default)
    assert "invalid:revenue" not in fixed.summary.reasons
    assert fixed.events.column("event_type").to_pylist() == [
        "product_view", "purchase",
    ]  # fmt: skip


def test_unknown_event_names_are_counted_and_named(tmp_path: Path) -> None:
    src = tmp_path / "clicks.csv"
    src.write_text(
        "visitor,event,when\nv2,teleport,1700000100\nv2,teleport ,1700000101\n"
        "v3,wish,1700000102\nv1,view,1700000000\n"
    )
    mapping = tmp_path / "clicks.yaml"
    mapping.write_text(CLICKS_MAPPING)
    result = _run(src, tmp_path, mapping_path=mapping)
    assert result.summary.unknown_event_types == {"teleport": 2, "wish": 1}
    assert result.summary.reasons == {"unknown_event_type": 3}
    assert result.bad["detail"][2].startswith("event_type: 'wish' is not one of")


def test_too_old_says_which_setting_to_change(tmp_path: Path) -> None:
    src = tmp_path / "CDNOW_master.txt"
    src.write_text(CDNOW)
    floor_2000 = 946_684_800.0  # a floor later than the 1997-98 log
    result = import_events(src, tmp_path / "events.parquet", now=NOW, min_ts=floor_2000)
    assert set(result.bad["reason"]) == {"too_old", "malformed_row"}
    assert "SEGSCORE_MIN_EVENT_TIME" in result.bad["detail"][0]


def test_unknown_suffix_lists_what_is_read(tmp_path: Path) -> None:
    src = tmp_path / "log.xlsx"
    src.write_text("x")
    with pytest.raises(ImportFailed, match=r"\.csv, \.tsv.*gzip"):
        _run(src, tmp_path)


def test_documented_defaults_are_the_settings_defaults() -> None:
    from infra.settings import PROJECT_ROOT, Settings

    doc = (PROJECT_ROOT / "docs" / "importing.md").read_text(encoding="utf-8")
    table = doc.split("## Defaults", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[1].strip("` "): cells[2].strip()
        for line in table.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 3
    }
    fields = Settings.model_fields
    for name in ("label_horizon_days", "snapshot_every_days", "max_future_seconds"):
        assert rows[name] == str(fields[name].default), name
    assert (
        rows["snapshot_at_activity"]
        == str(fields["snapshot_at_activity"].default).lower()
    )
    assert rows["min_event_time"].startswith(
        fields["min_event_time"].default.date().isoformat()
    )


def test_headerless_file_named_by_the_mapping(tmp_path: Path) -> None:
    # The CDNOW master file as first published: no header line.
    rows = CDNOW.split("\r\n", 1)[1]
    src = _gzip(tmp_path / "CDNOW_master.txt", rows)
    with pytest.raises(ImportFailed, match="first line looks like data"):
        _run(src, tmp_path)
    mapping = tmp_path / "cdnow.yaml"
    mapping.write_text(
        "header: [customer, date, cds, dollars]\n"
        "columns: {customer: user_id, date: ts, cds: quantity, dollars: revenue}\n"
        "constants: {event_type: purchase}\n"
        "timestamp: {format: '%Y%m%d'}\n"
    )
    result = _run(src, tmp_path, mapping_path=mapping)
    assert result.bad[["line", "reason"]].values.tolist() == [[4, "malformed_row"]]
    assert result.events.column("user_id").to_pylist() == [
        "00001", "00002", "00002", "00003",
    ]  # fmt: skip
    bad_header = tmp_path / "bad.yaml"
    bad_header.write_text("header: [a, a]\ncolumns: {a: user_id}\n")
    with pytest.raises(ImportFailed, match="distinct column names"):
        _run(src, tmp_path, mapping_path=bad_header)


def test_a_clickstream_is_not_taken_for_a_transaction_log() -> None:
    columns = ["visitorid", "timestamp", "event", "itemid", "price"]
    assert transactions_mapping(columns) is not None  # the names alone would fit
    with pytest.raises(ImportFailed, match=r"'event' names events.*clickstream"):
        detect_layout(columns)
