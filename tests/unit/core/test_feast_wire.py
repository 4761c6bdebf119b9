"""Feast's Redis encoding without Feast: the same bytes as Feast's own code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.Value_pb2 import Value
from hypothesis import given
from hypothesis import strategies as st

from core.store.feast_wire import bytes_value, field_hash, read_bytes_value
from core.store.online_reader import decode_value
from core.store.state_store import StateLayout
from infra.settings import PROJECT_ROOT


@given(st.text(max_size=200))
def test_field_hash_equals_feasts(name: str) -> None:
    assert field_hash(name) == _mmh3(name)


@given(st.binary(max_size=70_000))
def test_bytes_values_read_back_exactly(blob: bytes) -> None:
    encoded = Value(bytes_val=blob).SerializeToString()
    assert bytes_value(blob) == encoded
    assert read_bytes_value(encoded) == blob
    assert decode_value(encoded) == blob


@pytest.mark.parametrize(
    "value",
    [
        Value(string_val="not bytes"),
        Value(int64_val=7),
        Value(double_val=2.5),
        Value(bool_val=True),
    ],
)
def test_other_values_are_not_read_as_bytes(value: Value) -> None:
    raw = value.SerializeToString()
    assert read_bytes_value(raw) is None
    assert decode_value(raw) == value.__getattribute__(value.WhichOneof("val"))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05abc",  # shorter than its length says
        b"\x0a\x01abc",  # more bytes than its length says
        b"\x0a",  # no length
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # endless varint
        b"",
    ],
)
def test_malformed_bytes_values_are_left_to_the_proto_parser(raw: bytes) -> None:
    assert read_bytes_value(raw) is None


def test_the_scoring_read_path_does_not_import_feast() -> None:
    """The engine's modules read and decode Feast's hashes without Feast loaded."""
    code = (
        "import sys, core.store.online_reader, core.store.read_plan, "
        "core.store.state_store\n"
        "from core.store.state_store import StateLayout\n"
        "layout = StateLayout(project='p', direct_key=True)\n"
        "layout.key('u1'); layout.state_field\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'feast'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_a_layout_checked_against_feast_keeps_its_verdict() -> None:
    checked = StateLayout(project="p", direct_key=True)
    assert checked.key("ü1") == StateLayout(project="p").feast_key("ü1")
    # Told the direct build disagrees, a layout falls back to Feast's own function.
    assert StateLayout(project="p", direct_key=False).key("u1") == checked.key("u1")
