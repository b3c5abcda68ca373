"""The wire's integer columns: LEB128 varints, whatever the size of the column or its values."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from telemetry import wire


def leb128(values: list[int]) -> bytes:
    """The reference: unsigned LEB128, value by value."""
    out = bytearray()
    for value in values:
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


@given(st.lists(st.one_of(st.integers(0, 0x7F), st.integers(0, 2**64 - 1)), max_size=30))
def test_a_column_of_varints_is_leb128_and_reads_back(values):
    u = np.array(values, dtype=np.uint64)
    raw = wire._uvarints(u)
    assert raw == leb128(values)
    assert wire._read_uvarints(raw, len(values)).tolist() == values


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30))
def test_signed_varints_read_back(values):
    x = np.array(values, dtype=np.int64)
    assert wire._read_varints(wire._varints(x), len(values)).tolist() == values


@given(st.lists(st.one_of(st.integers(0, 0x7F), st.integers(0, 2**14), st.integers(0, 2**35),
                          st.sampled_from([0, 0x7F, 0x80, 2**63, 2**64 - 1])), max_size=300))
def test_leb128_of_a_long_column_of_any_widths_is_leb128_value_by_value(values):
    """``_leb128`` works a byte at a time for all values at once (rows of each value's j-th
    byte): the same bytes as value by value, for columns of values of mixed widths."""
    assert wire._leb128(np.array(values, dtype=np.uint64)) == leb128(values)
