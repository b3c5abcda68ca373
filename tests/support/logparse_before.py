"""The candump parser's fast pattern as it was at 0242853, before it found a line's first dot and
"#" where the first line has them (a search of the whole block's only for the other lines), before
it read lines of the common layout without tokens, read hex payloads as 64-bit words and summed
digits in float64 (``_integers_before`` is as it was at 979a29b): the reference the tests compare
``logparse`` with, frame for frame, record for record and count for count (lines left to
python-can). Its docstrings are as they were."""


from __future__ import annotations

import numpy as np

from telemetry.edge.logparse import (
    _CAN_ID_MASK,
    _DECIMAL,
    _DIGIT,
    _EXACT,
    _FD_LENGTH,
    _POW10F,
    _WIDEST_DECIMAL,
    CAN_ERR_BUSERROR,
    CAN_ERR_FLAG,
    CLASSIC,
    FD,
    _Block,
    _Candump,
    _frames,
    _powers,
    _Rows,
    _rows_with,
    _widths,
)


def _decimals_before(b: _Block, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens ``[s, e)`` of the form ``digits.digits`` as the float ``float()`` makes of them,
    and which tokens are of that form.

    A token of at most 15 digits (16 below 2**53) is an integer n and a number of decimal places
    p; n and 10**p are exact float64s and IEEE division rounds n / 10**p correctly, as ``float()``
    rounds the decimal: the same float, bit for bit.
    """
    length = e - s
    dots = np.flatnonzero(b.a == 46)
    k = np.searchsorted(dots, s)
    dot = dots[np.minimum(k, len(dots) - 1)] if len(dots) else s
    place = dot - s  # of the first dot
    layout = (length >= 3) & (length <= _WIDEST_DECIMAL) & (k < len(dots)) & (place >= 1) & (place <= length - 2)
    key = np.where(layout, length * 32 + place, 0)
    t = np.zeros(len(s))
    ok = np.zeros(len(s), bool)
    too_long = length > _WIDEST_DECIMAL
    codes = np.flatnonzero(np.bincount(key))
    for code in codes[codes > 0].tolist():
        width, place_ = divmod(code, 32)
        rows = np.flatnonzero(key == code)
        digits = b.windows(s[rows], width) - np.uint8(48)
        bad = digits >= 10
        bad[:, place_] = False  # the dot, read as a digit of weight 0
        weights = _powers(10, width) // np.where(np.arange(width) < place_, 10, 1)
        weights[place_] = 0
        n = digits @ weights
        t[rows] = n / _POW10F[width - place_ - 1]
        ok[rows] = n <= _EXACT
        too_long[rows] = n > _EXACT
        ok[rows[_rows_with(bad)]] = False
    # Longer numbers (nanoseconds on an epoch) are correct through float(), one at a time.
    for i in np.flatnonzero(too_long).tolist():
        token = bytes(b.a[s[i]:e[i]])
        if _DECIMAL.fullmatch(token):
            t[i], ok[i] = float(token), True
    return t, ok


def _integers_before(b: _Block, s: np.ndarray, e: np.ndarray, base: int, widest: int) -> tuple[np.ndarray, np.ndarray]:
    """The values of the tokens ``[s, e)`` read as unsigned integers of 1 to ``widest`` digits, and
    which of them are (no sign, no prefix, no underscore: ``int()`` reads more, python-can then does)."""
    length = e - s
    values = np.zeros(len(s), np.int64)
    ok = np.zeros(len(s), bool)
    for width in _widths(length, widest):
        rows = np.flatnonzero(length == width)
        digits = _DIGIT[base].take(b.windows(s[rows], width))
        values[rows] = digits @ _powers(base, width)
        ok[rows] = True
        ok[rows[_rows_with(digits >= base)]] = False
    return values, ok


def _hex_payload_before(b: _Block, s: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Payloads written as one hex string (``0102AB``) starting at ``s``, ``pairs`` bytes long."""
    data = np.zeros((b.n, FD if pairs.max(initial=0) > CLASSIC else CLASSIC), np.uint8)
    ok = np.ones(b.n, bool)
    for size in _widths(pairs, FD):
        rows = np.flatnonzero(pairs == size)
        nibbles = _DIGIT[16].take(b.windows(s[rows], 2 * size))
        data[rows, :size] = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
        ok[rows[_rows_with(nibbles >= 16)]] = False
    return data, ok


class CandumpBefore(_Candump):
    def fast(self, b: _Block) -> tuple[_Rows, np.ndarray]:
        a, ntok = b.a, b.ntok
        (s0, e0), (s2, e2), (s3, e3) = b.token(0), b.token(2), b.token(3)
        # A 4th token is the direction, one letter after a space (python-can looks at " r"/" t").
        letter = b.at(s3) | np.uint8(32)
        direction = (e3 - s3 == 1) & ((letter == ord("r")) | (letter == ord("t")))
        ok = b.plain & ((ntok == 3) | ((ntok == 4) & direction))
        ok &= (b.at(s0) == ord("(")) & (b.at(e0 - 1) == ord(")"))
        t, good_t = _decimals_before(b, s0 + 1, e0 - 1)
        ok &= good_t
        hashes = np.flatnonzero(a == ord("#"))
        k = np.searchsorted(hashes, s2)
        h = hashes[np.minimum(k, len(hashes) - 1)] if len(hashes) else e2
        ok &= (k < len(hashes)) & (h < e2)
        h = np.where(ok, h, s2)
        can_id, good_id = _integers_before(b, s2, h, 16, 8)
        ok &= good_id
        fd = (h + 1 < e2) & (b.at(h + 1) == ord("#"))
        ok &= ~fd | ((b.at(h + 2) - np.uint8(48)) < 10)  # python-can: int() of the one flags character
        data_start = np.where(fd, h + 3, h + 1)
        size = np.maximum(e2 - data_start, 0)
        remote = (size >= 1) & ((b.at(data_start) | 32) == ord("r"))
        ok &= ~remote | (size == 1) | ((size == 2) & ((b.at(data_start + 1) - np.uint8(48)) < 10))
        # An odd number of hex digits is a cut line (python-can makes one byte of the last digit,
        # and the DLC disagrees); more than 64 bytes is no CAN frame: both for python-can to read.
        ok &= remote | ((size % 2 == 0) & (size <= 2 * np.where(fd, FD, CLASSIC)))
        ok &= ~fd | remote | _FD_LENGTH[np.minimum(size // 2, FD + 1)]  # other lengths: python-can's, then refused
        pairs = np.where(ok & ~remote, size // 2, 0)
        data, good_data = _hex_payload_before(b, data_start, pairs)
        ok &= good_data
        value = can_id.astype(np.int64)
        error = ((value & CAN_ERR_FLAG) != 0) & ((value & CAN_ERR_BUSERROR) != 0)
        rows = _frames(t, value & _CAN_ID_MASK, h - s2 > 3, error, remote, fd & ~error, pairs, data, ok)
        return rows, ok | (b.plain & (ntok == 0))

