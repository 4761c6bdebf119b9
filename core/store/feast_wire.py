"""Feast's Redis encoding, the parts every online read and write needs, without Feast.

Field names are murmur3 hashes of ``view:feature``, and values are Feast ``Value``
protos. Importing Feast (its protos come with the whole package: pandas, pyarrow,
SQLAlchemy) costs a process about 170 MB, which a scoring worker that only reads a
few hash fields need not carry. These functions produce and read the same bytes as
Feast's own code (``tests/unit/core/test_feast_wire.py`` compares them); anything
outside their fast paths is handed to Feast's proto classes, imported then.
"""

from __future__ import annotations

import struct
from typing import Any

import mmh3


def field_hash(name: str) -> bytes:
    """The hash field of ``view:feature`` (Feast's ``helpers._mmh3``).

    Feast keeps the low four bytes of the little-endian unsigned murmur3_32.
    """
    return struct.pack("<I", mmh3.hash(name, signed=False))


def varint(n: int) -> bytes:
    """A non-negative int as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bytes_value(blob: bytes) -> bytes:
    """``Value(bytes_val=blob).SerializeToString()``: field 1, length-delimited."""
    return b"\x0a" + varint(len(blob)) + blob


def read_bytes_value(raw: bytes) -> bytes | None:
    """The blob of an encoded ``Value(bytes_val=...)``; None if ``raw`` is not one.

    Only the exact encoding :func:`bytes_value` writes is accepted (tag, length,
    payload filling the rest); any other message, even a valid one, is left to
    the proto parser so that nothing unusual is misread.
    """
    if len(raw) < 2 or raw[0] != 0x0A:
        return None
    length = shift = 0
    i = 1
    while i < len(raw) and i <= 10:
        byte = raw[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return raw[i:] if len(raw) - i == length else None
        shift += 7
    return None


def parse_value(raw: bytes) -> Any:
    """A ``Value`` proto parsed by Feast's own class (imported on first need)."""
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    return value
