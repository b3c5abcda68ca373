"""candump ``-L`` and Vector ASC logs parsed in bulk into columns (``Frames``), many lines at once.

python-can's readers build one ``can.Message`` per line at a few microseconds each. This module
reads a block of lines as bytes, finds every line's tokens with numpy, checks each line against a
strict pattern of the common case and decodes the lines that fit in a handful of array operations
(candump lines of the usual layout are read from their starts and ends alone, every byte checked,
without the tokens; the block's other lines by their tokens).
A line that does not fit (odd spacing, a tab, a non-ASCII byte, a corrupt or truncated frame, a
number written in a form the pattern does not cover) is read by python-can's own reader for the
format, on its own, and counted (``ParseCounts.slow_lines``): the parser never guesses. Every line
python-can turns into a frame therefore gives the same frame (timestamps bit for bit: a decimal
of at most 15 digits is an exact integer divided by an exact power of ten, which IEEE division
rounds as ``float()`` does), and every line it fails on is a ``BadRecord`` with the same file, line
number and reason as ``LogSource.frames`` records, the frames around it kept. A last line without
newline that gives no frame is recorded as truncated, as there.

Both parsers are generators of ``Frames`` chunks of at most ``chunk_frames`` frames (empty chunks
are not yielded); the ``BadRecord`` s found are appended, in line order, to the list passed in, each
before the chunk that would have held its frame is yielded.

ASC timestamps are those of python-can's ``ASCReader`` with its defaults (as ``LogSource`` and
``can.LogReader`` use it: ``relative_timestamp=True``): the number written on the line, the ``date``
and ``Begin Triggerblock`` headers do not move them (``LogSource`` adds the header's date, read by
``asc_start_time``, to both its paths). The header (``date``, ``base hex|dec``,
comments, ``internal events logged``) is read by python-can's own header parser.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import can
import numpy as np
from can.io.asc import ASC_MESSAGE_REGEX, ASC_TRIGGER_REGEX, ASCReader
from can.io.canutils import CanutilsLogReader

from .frames import CLASSIC, FD, Frames

LOG = logging.getLogger(__name__)

# Lines parsed at once: about 600 bytes of working memory a line at the peak (5 MiB here), as fast
# as 16,384 and 2 MB less peak memory for the reader (measured on the sample drive).
CHUNK_FRAMES = 8_192
_BYTES_PER_LINE = 64  # a first guess of a line's size, for the size of the blocks read

CAN_ERR_FLAG = 0x20000000  # as python-can's canutils: an error frame has both bits set
CAN_ERR_BUSERROR = 0x00000080
_CAN_ID_MASK = 0x1FFFFFFF
_EXACT = 2**53  # every integer up to here is a float64
_WIDEST_DECIMAL = 17  # "d.ddd" of at most 16 digits (and 2**53 has 16)
_NAME_WIDTH = 32  # a longer CAN FD symbolic name (or brs) is left to python-can
_DLC_TO_LEN = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64], np.int64)
_FD_LENGTH = np.zeros(FD + 2, bool)
_FD_LENGTH[_DLC_TO_LEN] = True


@dataclass(frozen=True)
class BadRecord:
    """A part of a log that yielded no frame: where it is and why."""

    file: str
    line: int | None
    reason: str
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}" + (f" [{self.text}]" if self.text else "")


@dataclass
class ParseCounts:
    """What a parse went through, for reports: lines, frames, and the lines python-can's own
    reader had to read because they did not fit the fast pattern."""

    lines: int = 0
    frames: int = 0
    slow_lines: int = 0


def frame_problem(msg: can.Message) -> str | None:
    """Why a frame a reader produced cannot be a real frame, or None."""
    if msg.is_error_frame or msg.is_remote_frame:
        return None
    if len(msg.data) != msg.dlc:
        return f"DLC {msg.dlc} but {len(msg.data)} data bytes (truncated line?)"
    if len(msg.data) > FD:
        return None  # no row of Frames holds it: column_problem says so
    return length_problem(len(msg.data), bool(msg.is_fd))


_FD_LENGTHS = frozenset(_DLC_TO_LEN.tolist())


def length_problem(length: int, fd: bool) -> str | None:
    """Why a frame of ``length`` data bytes cannot have come from its bus, or None: a classic
    frame carries at most 8 bytes, a CAN FD frame one of 0-8, 12, 16, 20, 24, 32, 48, 64."""
    if not fd and length > CLASSIC:
        return f"classic CAN frame with {length} data bytes (at most {CLASSIC})"
    if fd and length not in _FD_LENGTHS:
        return f"CAN FD frame with {length} data bytes (not a CAN FD length)"
    return None


_ASC_TIMESTAMPED = re.compile(r"\d+\.\d+(\s|$)")
_ASC_STRUCTURE = re.compile(r"(//|begin\s+triggerblock|end\s+triggerblock|date\s|base\s|(no\s+)?internal\s+events)",
                            re.IGNORECASE)


class _NotALine(Exception):
    """A line that is no line of its log's format at all."""


def asc_line_problem(text: str) -> str | None:
    """Why a line of an ASC log's body that gives no frame is not a line of an ASC log at all
    (None for blank lines, comments, triggers, header keywords, and every line that starts with a
    timestamp: Vector's events, statistics, J1939 transport lines ... that carry no CAN frame)."""
    line = text.strip()
    if not line or _ASC_TIMESTAMPED.match(line) or _ASC_STRUCTURE.match(line):
        return None
    return "not a line of an ASC log"


def column_problem(msg: can.Message) -> str | None:
    """Why a frame python-can produced cannot be a row of ``Frames`` (uint32 ids, at most 64
    bytes), or None. python-can accepts any int and any length; a log line can say anything."""
    if not 0 <= msg.arbitration_id <= 0xFFFFFFFF:
        return f"id {msg.arbitration_id} does not fit 32 bits"
    if len(msg.data) > FD:
        return f"{len(msg.data)} data bytes, more than CAN FD's {FD}"
    return None


def parse_candump(path: str | Path, bad_records: list[BadRecord], *, chunk_frames: int = CHUNK_FRAMES,
                  counts: ParseCounts | None = None) -> Generator[Frames, None, None]:
    """The frames of a ``candump -L`` log as python-can's ``CanutilsLogReader`` reads them."""
    parser = _Candump(Path(path), bad_records, counts if counts is not None else ParseCounts())
    with open(path, "rb") as file:
        yield from parser.body(_LineReader(file, chunk_frames), 0, chunk_frames)


def parse_asc(path: str | Path, bad_records: list[BadRecord], *, chunk_frames: int = CHUNK_FRAMES,
              counts: ParseCounts | None = None) -> Generator[Frames, None, None]:
    """The frames of a Vector ASC log as python-can's ``ASCReader`` (default arguments) reads them."""
    counts = counts if counts is not None else ParseCounts()
    with open(path, "rb") as file:
        lines = _LineReader(file, chunk_frames)
        header = _asc_header(Path(path), lines, bad_records)
        if header is None:
            return
        base, lineno = header
        counts.lines += lineno
        yield from _Asc(Path(path), bad_records, counts, base).body(lines, lineno, chunk_frames)


PARSERS: dict[str, Callable[..., Generator[Frames, None, None]]] = {".log": parse_candump, ".asc": parse_asc}

# python-can's header rules (ASCReader._extract_header): lines it reads on past, and its last line
_ASC_DATE = re.compile(r"date\s+\w+\s+(?P<datetime_string>.+)", re.IGNORECASE)
_ASC_HEADER_MORE = re.compile(r"base\s+(hex|dec)|//", re.IGNORECASE)


def asc_start_time(path: str | Path, max_lines: int = 100) -> tuple[float, str] | None:
    """The absolute start of a Vector ASC log's first frame and the date text it comes from, as
    python-can's ``ASCReader(relative_timestamp=False)`` reads it: the header's ``date``, replaced
    by the date of a ``Begin Triggerblock <date>`` line after the header (python-can's own writer
    puts the first frame's time there; python-can's header parser swallows the line after a
    header that does not end in ``internal events logged``, so it is not read there either), in
    this computer's time zone (the file names none). None when there is no date python-can
    understands. A trigger block's date after the first frame is not applied. The parsers above
    give times from 0; ``LogSource`` adds this to them."""
    found: tuple[float, str] | None = None

    def read(date: str) -> tuple[float, str] | None:
        try:
            return ASCReader._datetime_to_timestamp(date), date
        except ValueError:
            return None  # python-can would fail on it: no date is better than a guess

    with open(path, "rb") as file:
        lines = (line.decode("utf-8", "replace").lstrip("\ufeff").strip() for line in itertools.islice(file, max_lines))
        for text in lines:  # the header, as python-can reads it
            if match := _ASC_DATE.match(text):
                found = read(match.group("datetime_string"))
            elif not _ASC_HEADER_MORE.match(text):
                break  # this line is consumed with the header, whatever it is
        for text in lines:  # the body, up to the first frame
            if match := ASC_TRIGGER_REGEX.match(text):
                found = read(match.group("datetime_string"))
            elif ASC_MESSAGE_REGEX.match(text):
                break
    return found


def _record(bad_records: list[BadRecord], path: Path, line: int | None, reason: str, text: str = "") -> None:
    record = BadRecord(str(path), line, reason, text.strip()[:80])
    LOG.info("skipped %s", record)
    bad_records.append(record)


class _LineReader:
    """A log file as blocks of whole lines of bytes, newlines translated as text mode does (``\\r\\n``
    and a lone ``\\r`` end a line too), so that line numbers agree with python-can reading it as text."""

    def __init__(self, file: BinaryIO, chunk_frames: int) -> None:
        self._file = file
        self._size = max(1 << 16, min(chunk_frames, 1 << 20) * _BYTES_PER_LINE)
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._cr = False  # a block ended on \r: it may be the first half of \r\n
        self._start = True  # a UTF-8 byte-order mark at the very start is no part of the first line

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._file.read(self._size)
        if self._start:
            self._start = False
            data = data.removeprefix(b"\xef\xbb\xbf")
        if not data:
            self._eof = True
            if not self._cr:
                return False
            data, self._cr = b"\n", False
        if self._cr:
            data, self._cr = b"\r" + data, False
        if data.endswith(b"\r"):
            data, self._cr = data[:-1], True
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._buf = self._buf[self._pos:] + data
        self._pos = 0
        return True

    def readline(self) -> bytes:
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0 or not self._fill():
                end = end + 1 if end >= 0 else len(self._buf)
                line, self._pos = self._buf[self._pos:end], end
                return line

    def block(self) -> memoryview:
        """The next whole lines (the file's last line may lack its newline), no copy of them; empty
        at the end."""
        while True:
            end = self._buf.rfind(b"\n", self._pos) + 1
            if end > self._pos or not self._fill():
                end = end if end > self._pos else len(self._buf)
                block, self._pos = memoryview(self._buf)[self._pos:end], end
                return block


class _Block:
    """Lines of bytes split into whitespace-separated tokens, all lines at once. The tokens (and
    ``plain``) are found when first asked for: a parser's layout path may read every line without
    them."""

    def __init__(self, a: np.ndarray, newlines: np.ndarray | None = None) -> None:
        self.a = a
        newlines = np.flatnonzero(a == 10) if newlines is None else newlines
        self.newlines = newlines
        self.unterminated = bool(len(a)) and a[-1] != 10
        self.ends = np.append(newlines, len(a)) if self.unterminated else newlines
        self.starts = np.concatenate(([0], self.ends[:-1] + 1))
        self.n = len(self.ends)
        # Padded on both sides, so that windows and single bytes near the edges need no checks (and
        # to a whole number of 64-bit words, for ``word``).
        self.padded = np.concatenate((_PADDING[:_PAD], a, _PADDING[:_PAD + 8 - (len(a) + 2 * _PAD) % 8]))
        self._views: dict[int, np.ndarray] = {}

    @functools.cached_property
    def plain(self) -> np.ndarray:
        """Which lines are only printable ASCII and spaces: only those are read here; anything else
        (a tab, a control character, UTF-8) is python-can's to read."""
        a = self.a
        plain = np.ones(self.n, bool)
        if np.count_nonzero(a < 32) != len(self.newlines) or np.count_nonzero(a > 126):
            odd = np.flatnonzero(((a < 32) & (a != 10)) | (a > 126))
            plain[np.searchsorted(self.ends, odd)] = False
        if self.unterminated:
            plain[-1] = False  # a logger that lost power: python-can's reader says what it is
        return plain

    @functools.cached_property
    def _tokens(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Tokens: where the bytes turn from separators (space, newline, control) to others and back.
        a = self.a
        sep = a <= 32
        edges = np.flatnonzero(sep[1:] != sep[:-1]) + 1
        if len(a) and not sep[0]:
            edges = np.concatenate(([0], edges))
        if len(a) and not sep[-1]:
            edges = np.append(edges, len(a))
        tok_start = np.ascontiguousarray(edges[0::2])
        tok_end = np.ascontiguousarray(edges[1::2])
        before_end = np.searchsorted(tok_start, self.ends)
        ntok = np.diff(before_end, prepend=0)
        return tok_start, tok_end, ntok, before_end - ntok

    @property
    def tok_start(self) -> np.ndarray:
        """Where each token of the block starts."""
        return self._tokens[0]

    @property
    def tok_end(self) -> np.ndarray:
        """Where each token of the block ends (the separator after it)."""
        return self._tokens[1]

    @property
    def ntok(self) -> np.ndarray:
        """How many tokens each line has."""
        return self._tokens[2]

    @property
    def first(self) -> np.ndarray:
        """The index of each line's first token (in ``tok_start``)."""
        return self._tokens[3]

    def token(self, j: int | np.ndarray, lines: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start and end of token ``j`` of each line (of ``lines``), 0, 0 where a line has fewer."""
        ntok, first = (self.ntok, self.first) if lines is None else (self.ntok[lines], self.first[lines])
        present = ntok > j
        if not len(self.tok_start):
            zero = np.zeros(len(ntok), np.int64)
            return zero, zero
        idx = np.where(present, first + j, 0)
        return np.where(present, self.tok_start[idx], 0), np.where(present, self.tok_end[idx], 0)

    def at(self, pos: np.ndarray) -> np.ndarray:
        """The bytes at ``pos`` (0 just outside the block)."""
        return self.padded[pos + _PAD]

    def windows(self, start: np.ndarray, width: int) -> np.ndarray:
        """The ``width`` bytes from each of ``start``, as rows of a matrix."""
        view = self._views.get(width)
        if view is None:
            # Every run of ``width`` bytes as a row, without a copy (``sliding_window_view``, less its checks).
            view = self._views[width] = np.ndarray((len(self.padded) - width + 1, width), np.uint8, self.padded,
                                                   strides=(1, 1))
        return view[start + _PAD]

    def word(self, start: np.ndarray) -> np.ndarray:
        """The 8 bytes from each of ``start`` as a little-endian 64-bit word (the byte at ``start``
        lowest): two aligned words gathered and shifted together, cheaper than a gather of every byte."""
        aligned = self.padded.view("<u8")
        pos = start + _PAD
        index = pos >> 3
        low = ((pos & 7) << 3).astype(np.uint64)
        high = np.uint64(63) - low  # shifted by one more below: a shift by 64 is no shift in C
        return (aligned.take(index) >> low) | ((aligned.take(index + 1) << np.uint64(1)) << high)

    def text(self, i: int) -> str:
        return bytes(self.a[self.starts[i]:self.ends[i] + 1]).decode("utf-8", "replace")


_PAD = 3 * FD + 8  # wider than any window taken (an ASC CAN FD payload: 64 times "FF ")
_PADDING = np.zeros(_PAD + 8, np.uint8)
_DIGIT = {base: np.full(256, 255, np.uint8) for base in (10, 16)}
for _c in range(10):
    _DIGIT[10][48 + _c] = _DIGIT[16][48 + _c] = _c
for _c in range(6):
    _DIGIT[16][65 + _c] = _DIGIT[16][97 + _c] = 10 + _c
_POW10F = 10.0 ** np.arange(23)


def _powers(base: int, width: int) -> np.ndarray:
    return base ** np.arange(width - 1, -1, -1, dtype=np.int64)


def _dot(digits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``digits @ weights`` of small non-negative integers, in float64 (BLAS: a few times faster
    than numpy's integer matmul). Every product and every partial sum is an integer, exact while
    below 2**53; a sum past 2**53 comes out at 2**53 or above (rounding is monotonic)."""
    return digits @ weights.astype(np.float64)


def _widths(length: np.ndarray, widest: int) -> list[int]:
    """The token lengths from 1 to ``widest`` that occur: tokens are decoded one length at a time,
    as fixed-width matrices (a block has few: ids of 3 and 8 digits, timestamps of one layout)."""
    counts = np.bincount(np.clip(length, 0, widest + 1), minlength=widest + 2)
    return (np.flatnonzero(counts[1:widest + 1]) + 1).tolist()


def _rows_with(bad: np.ndarray) -> np.ndarray:
    """The rows of a matrix of flags that have any (cheaper than ``any(axis=1)`` on short rows)."""
    return np.flatnonzero(bad) // bad.shape[1]


def _integers(b: _Block, s: np.ndarray, e: np.ndarray, base: int, widest: int) -> tuple[np.ndarray, np.ndarray]:
    """The values of the tokens ``[s, e)`` read as unsigned integers of 1 to ``widest`` digits, and
    which of them are (no sign, no prefix, no underscore: ``int()`` reads more, python-can then does)."""
    length = e - s
    values = np.zeros(len(s), np.int64)
    ok = np.zeros(len(s), bool)
    for width in _widths(length, widest):
        rows = np.flatnonzero(length == width)
        digits = _DIGIT[base].take(b.windows(s[rows], width))
        values[rows] = _dot(digits, _powers(base, width))  # at most 9 digits (16**9 < 2**53): exact
        ok[rows] = True
        ok[rows[_rows_with(digits >= base)]] = False
    return values, ok


def _digits_only(b: _Block, s: np.ndarray, e: np.ndarray, widest: int) -> np.ndarray:
    """Whether the tokens ``[s, e)`` are 1 to ``widest`` decimal digits (``str.isdigit`` on ASCII)."""
    length = e - s
    ok = np.zeros(len(s), bool)
    for width in _widths(length, widest):
        rows = np.flatnonzero(length == width)
        ok[rows] = True
        ok[rows[_rows_with(b.windows(s[rows], width) - np.uint8(48) >= 10)]] = False
    return ok


def _decimals(b: _Block, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens ``[s, e)`` of the form ``digits.digits`` as the float ``float()`` makes of them,
    and which tokens are of that form.

    A token of at most 15 digits (16 below 2**53) is an integer n and a number of decimal places
    p; n and 10**p are exact float64s and IEEE division rounds n / 10**p correctly, as ``float()``
    rounds the decimal: the same float, bit for bit.
    """
    length = e - s
    # The first dot's place: where the first token has it, on every line that has a dot there
    # within the token (an earlier dot in a token makes it no decimal either way: that place is
    # not a digit); on the other lines, found by a search of the block's dots.
    place = np.full(len(s), -1)
    guess = _place_in_first(b, s, e, b".")
    if guess >= 1:
        place[(b.at(s + guess) == 46) & (length - 2 >= guess)] = guess
    rest = np.flatnonzero(place < 0)
    if len(rest):
        dots = np.flatnonzero(b.a == 46)
        k = np.searchsorted(dots, s[rest])
        if len(dots):
            place[rest] = np.where(k < len(dots), dots[np.minimum(k, len(dots) - 1)] - s[rest], -1)
    layout = (length >= 3) & (length <= _WIDEST_DECIMAL) & (place >= 1) & (place <= length - 2)
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
        n = _dot(digits, weights)  # exact below 2**53; from 2**53 on, float() reads it below
        t[rows] = n / _POW10F[width - place_ - 1]
        ok[rows] = n < _EXACT
        too_long[rows] = n >= _EXACT
        ok[rows[_rows_with(bad)]] = False
    # Longer numbers (nanoseconds on an epoch) are correct through float(), one at a time.
    for i in np.flatnonzero(too_long).tolist():
        token = bytes(b.a[s[i]:e[i]])
        if _DECIMAL.fullmatch(token):
            t[i], ok[i] = float(token), True
    return t, ok


_DECIMAL = re.compile(rb"[0-9]+\.[0-9]+")


def _place_in_first(b: _Block, s: np.ndarray, e: np.ndarray, char: bytes) -> int:
    """Where ``char`` first is in the first of the tokens ``[s, e)`` (-1: not there, or no token)."""
    return bytes(b.a[s[0]:e[0]]).find(char) if len(s) and e[0] > s[0] else -1


def _byte_tokens(b: _Block, first: np.ndarray, count: np.ndarray, base: int,
                 spaced_hex: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Payloads written as one token per byte: tokens ``first .. first+count-1`` of each line, as a
    zero-padded matrix, and whether every one of them is a byte in ``base``."""
    data, line_ok = _spaced_hex_payload(b, first, count) if spaced_hex else (None, np.zeros(b.n, bool))
    line_ok |= count == 0
    width = FD if count.max(initial=0) > CLASSIC else CLASSIC
    if data is None:
        data = np.zeros((b.n, width), np.uint8)
    if line_ok.all():
        return data, line_ok
    # Any other spelling, one token at a time: "1 2 FF", a decimal log.
    rest = np.where(line_ok, 0, count)
    rows, which = np.nonzero(np.arange(width) < rest[:, None])
    tok = b.first[rows] + first[rows] + which
    values, ok = _integers(b, b.tok_start[tok], b.tok_end[tok], base, 2 if base == 16 else 3)
    ok &= values <= 255
    data[rows, which] = values
    line_ok[rows] = True
    line_ok[rows[~ok]] = False
    return data, line_ok


def _spaced_hex_payload(b: _Block, first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Payloads written as Vector writes them, ``01 02 0A``: two hex digits a byte, one space
    between; tokens ``first ..`` of each line. Rows written otherwise are not ok (not read)."""
    data = np.zeros((b.n, FD if count.max(initial=0) > CLASSIC else CLASSIC), np.uint8)
    ok = np.zeros(b.n, bool)
    start = b.tok_start[np.minimum(b.first + first, len(b.tok_start) - 1)] if len(b.tok_start) else first
    for size in _widths(count, FD):
        rows = np.flatnonzero(count == size)
        window = b.windows(start[rows], 3 * size)  # with the separator after the last byte
        nibbles = _DIGIT[16].take(window)
        _put(data, rows, size, (nibbles[:, 0::3] << 4) | nibbles[:, 1::3])
        ok[rows] = True
        ok[rows[_rows_with(nibbles[:, 0::3] >= 16)]] = False
        ok[rows[_rows_with(nibbles[:, 1::3] >= 16)]] = False
        ok[rows[_rows_with(window[:, 2:-1:3] != 32)]] = False
        ok[rows[window[:, -1] > 32]] = False
    return data, ok


def _hex_payload(b: _Block, s: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Payloads written as one hex string (``0102AB``) starting at ``s``, ``pairs`` bytes long."""
    data = np.zeros((b.n, FD if pairs.max(initial=0) > CLASSIC else CLASSIC), np.uint8)
    ok = np.ones(b.n, bool)
    if data.shape[1] == CLASSIC and len(s):
        # classic frames of any lengths at once: 16 digits read from every line, each line's
        # own length of them kept (what lies past a line's payload is neither read nor checked)
        # (as 64-bit words: a row's 16 digits are two words, its 8 bytes one)
        nibbles = _DIGIT[16].take(b.windows(s, 2 * CLASSIC))
        odd = (nibbles >= 16).view("<u8")
        ok = ((odd[:, 0] & _MINE_LOW[pairs]) | (odd[:, 1] & _MINE_HIGH[pairs])) == 0
        pair = nibbles.view("<u2")  # a byte's first digit in the low half (little-endian)
        data = ((pair << 4) | (pair >> 8)).astype(np.uint8)
        data.view("<u8")[:, 0] &= _MINE_BYTES[pairs]
        return data, ok
    for size in _widths(pairs, FD):
        rows = np.flatnonzero(pairs == size)
        nibbles = _DIGIT[16].take(b.windows(s[rows], 2 * size))
        _put(data, rows, size, (nibbles[:, 0::2] << 4) | nibbles[:, 1::2])
        ok[rows[_rows_with(nibbles >= 16)]] = False
    return data, ok


# Per payload length 0-8: its bytes' (and their two hex digits') flags as 64-bit words (little-endian).
_MINE_BYTES = np.array([(1 << 8 * k) - 1 for k in range(CLASSIC + 1)], "<u8")
_MINE_LOW = np.array([(1 << 8 * min(2 * k, 8)) - 1 for k in range(CLASSIC + 1)], "<u8")
_MINE_HIGH = np.array([(1 << 8 * max(2 * k - 8, 0)) - 1 for k in range(CLASSIC + 1)], "<u8")


def _put(data: np.ndarray, rows: np.ndarray, size: int, values: np.ndarray) -> None:
    """``data[rows, :size] = values``; as a slice when ``rows`` are all the rows (the usual block of
    one payload length: numpy copies a slice at once, fancy-indexed rows one at a time)."""
    if len(rows) == len(data):
        data[:, :size] = values
    else:
        data[rows, :size] = values


def _starts_with(b: _Block, s: np.ndarray, text: bytes, fold: bool = False) -> np.ndarray:
    """Whether the tokens starting at ``s`` start with ``text`` (lowercase, in any case if ``fold``)."""
    if len(text) <= 8:  # one word a token, masked to the text's bytes
        word = b.word(s)
        mask = np.uint64((1 << 8 * len(text)) - 1)
        if fold:
            word = word | np.uint64(int.from_bytes(b" " * len(text), "little"))
        return (word & mask) == np.uint64(int.from_bytes(text, "little"))
    window = b.windows(s, len(text))
    if fold:
        window = window | np.uint8(32)
    return np.ascontiguousarray(window).view(f"S{len(text)}").ravel() == text


@dataclass
class _Rows:
    """The frames of the lines the fast pattern read, with their line numbers in the block."""

    line: np.ndarray
    frames: Frames


class _Parser:
    """Reads blocks of lines: the fast pattern first, python-can's reader for the rest."""

    def __init__(self, path: Path, bad_records: list[BadRecord], counts: ParseCounts) -> None:
        self.path = path
        self.bad_records = bad_records
        self.counts = counts

    def fast(self, b: _Block) -> tuple[_Rows, np.ndarray]:
        """The frames of the lines that fit the pattern, and which lines are done with (read, or
        blank)."""
        raise NotImplementedError

    def line(self, text: str) -> list[can.Message]:
        """One line as python-can's reader reads it (it raises where python-can raises)."""
        raise NotImplementedError

    def body(self, lines: _LineReader, lineno: int, chunk_frames: int) -> Iterator[Frames]:
        while data := lines.block():
            a = np.frombuffer(data, np.uint8)
            newlines = np.flatnonzero(a == 10)
            cuts = [0, *(newlines[chunk_frames - 1::chunk_frames] + 1).tolist()]
            if cuts[-1] < len(a):
                cuts.append(len(a))
            for lo, hi in itertools.pairwise(cuts):
                inside = newlines[np.searchsorted(newlines, lo):np.searchsorted(newlines, hi)]
                b = _Block(a[lo:hi], inside - lo)
                frames = self.block(b, lineno)
                lineno += b.n
                if len(frames):
                    yield frames

    def block(self, b: _Block, lineno: int) -> Frames:
        rows, done = self.fast(b)
        slow_lines: list[int] = []
        slow: list[can.Message] = []
        for i in np.flatnonzero(~done).tolist():
            for msg in self.slow_line(b, i, lineno + i + 1, b.unterminated and i == b.n - 1):
                slow_lines.append(i)
                slow.append(msg)
        frames = rows.frames
        if slow:
            order = np.argsort(np.concatenate((rows.line, slow_lines)), kind="stable")
            frames = Frames.concat([frames, Frames.from_messages(slow)]).take(order)
        self.counts.lines += b.n
        self.counts.frames += len(frames)
        return frames

    def slow_line(self, b: _Block, i: int, lineno: int, last_unterminated: bool) -> list[can.Message]:
        text = b.text(i)
        good: list[can.Message] = []
        try:
            messages = self.line(text)
        except _NotALine as exc:
            self.bad(lineno, str(exc), text)
            return good
        except Exception as exc:  # python-can raises ValueError, IndexError, ... per line
            self.bad(lineno, f"{type(exc).__name__}: {exc}", text)
            return good
        for msg in messages:
            problem = frame_problem(msg) or column_problem(msg)
            if problem:
                self.bad(lineno, problem, text)
            else:
                good.append(msg)
        if last_unterminated and not good and text.strip():
            self.bad(lineno, "truncated last line (no newline, no frame)", text)
        return good

    def bad(self, line: int, reason: str, text: str) -> None:
        _record(self.bad_records, self.path, line, reason, text)


def _frames(t: np.ndarray, can_id: np.ndarray, extended: np.ndarray, error: np.ndarray, remote: np.ndarray,
            fd: np.ndarray, length: np.ndarray, data: np.ndarray, keep: np.ndarray) -> _Rows:
    """The rows ``keep`` of a block's decoded columns, error frames as python-can makes them
    (``Message(is_error_frame=True)``: id 0, extended, no data)."""
    no_data = error | remote
    if no_data.any():
        length = np.where(no_data, 0, length)
        data[no_data] = 0
        can_id = np.where(error, 0, can_id)
    columns = [t, can_id.astype(np.uint32), extended | error, error, remote & ~error, fd, length.astype(np.uint8), data]
    if not keep.all():
        columns = [column[keep] for column in columns]
    if columns[6].max(initial=0) <= CLASSIC:
        columns[7] = columns[7][:, :CLASSIC]
    columns[7] = np.ascontiguousarray(columns[7], np.uint8)
    return _Rows(np.flatnonzero(keep), Frames(*columns))


# A line of the layout ``_Candump.layout`` reads, among a block's first bytes: its bus.
_CANDUMP_LAYOUT = re.compile(rb"^\([0-9]+\.[0-9]+\) ([!-~]{1,16}) [0-9A-Fa-f]+#", re.MULTILINE)
_LAYOUT_PROBE = 1024
_CANDUMP_BUS = re.compile(rb" [!-~]{1,16} ")  # a line's bus, after its timestamp
_MORE_BUSES = 4  # buses read by the layout besides the first line's; lines of more go by tokens


class _Candump(_Parser):
    """``(1436509052.249713) vcan0 12345678#112233 R``: ``ID#DATA``, ``ID#R``, ``ID##<flags>DATA``."""

    def fast(self, b: _Block) -> tuple[_Rows, np.ndarray]:
        layout = self.layout(b)
        if layout is None:
            return self.tokens(b)
        rows, ok = layout
        if ok.all():
            return rows, ok
        # The lines of another layout (another bus, a remote or CAN FD frame, a blank or odd line),
        # by tokens, as a block of their own: every line is read on its own by the tokens too.
        other = np.flatnonzero(~ok)
        starts, ends = b.starts[other].tolist(), (b.ends[other] + 1).tolist()
        data = b"".join(b.a[lo:hi].tobytes() for lo, hi in zip(starts, ends))
        other_rows, other_done = self.tokens(_Block(np.frombuffer(data, np.uint8)))
        done = ok.copy()
        done[other] = other_done
        lines = np.concatenate((rows.line, other[other_rows.line]))
        order = np.argsort(lines, kind="stable")
        return _Rows(lines[order], Frames.concat([rows.frames, other_rows.frames]).take(order)), done

    def layout(self, b: _Block) -> tuple[_Rows, np.ndarray] | None:
        """The lines written as ``(<t>) <bus> <id>#<data>[ R|T]``, ``<bus>`` that of the block's
        first such line or one of a few others (of its first lines on another bus), ``<id>`` of 3 or 8 hex digits and at most 8 bytes of data, read from the
        lines' starts and ends alone (no tokens): every byte of such a line is checked. The frames
        and which lines they are; None when no line of the first ones is of that layout."""
        first = _CANDUMP_LAYOUT.search(b.a[:_LAYOUT_PROBE].tobytes())
        if first is None:
            return None
        bus = b" " + first.group(1) + b" "
        st, en = b.starts, b.ends
        closes = np.flatnonzero(b.a == ord(")"))
        if len(closes) == b.n:
            close = closes  # one a line, nearly always: each line's own when it lies in that line
            ok = (close > st) & (close < en)
        else:
            k = np.searchsorted(closes, st)
            close = closes[np.minimum(k, len(closes) - 1)] if len(closes) else st
            ok = (k < len(closes)) & (close < en)
        ok &= b.at(st) == ord("(")
        close = np.where(ok, close, st)  # no timestamp where there is no ")"
        t, good_t = _decimals(b, st + 1, close)
        ok &= good_t
        on_bus = _starts_with(b, close + 1, bus)
        bus_width = np.full(b.n, len(bus))
        others = np.flatnonzero(ok & ~on_bus)  # another bus (an error frame on vcan0, a second bus)
        for _ in range(_MORE_BUSES):
            if not len(others):
                break
            at = int(close[others[0]]) + 1
            found = _CANDUMP_BUS.match(b.a[at:at + 18].tobytes())
            if found is None:  # no bus there: the tokens say what the line is
                others = others[1:]
                continue
            on_other = _starts_with(b, close[others] + 1, found.group())
            on_bus[others[on_other]] = True
            bus_width[others[on_other]] = len(found.group())
            others = others[~on_other]
        ok &= on_bus
        s2 = close + 1 + bus_width
        h = np.where(b.at(s2 + 3) == ord("#"), s2 + 3, s2 + 8)
        ok &= b.at(h) == ord("#")
        can_id, good_id = _integers(b, s2, h, 16, 8)
        ok &= good_id
        # " R" or " T" at the end: the direction; the data is what lies between "#" and the end
        direction = b.at(en - 2) == ord(" ")
        letter = b.at(en - 1) | np.uint8(32)
        ok &= ~direction | (letter == ord("r")) | (letter == ord("t"))
        size = en - h - 1 - 2 * direction
        ok &= (size >= 0) & (size <= 2 * CLASSIC) & (size % 2 == 0)
        if b.unterminated:
            ok[-1] = False  # python-can's reader says what a cut last line is
        pairs = np.where(ok, size // 2, 0)
        data, good_data = _hex_payload(b, h + 1, pairs)
        ok &= good_data
        value = can_id.astype(np.int64)
        error = ((value & CAN_ERR_FLAG) != 0) & ((value & CAN_ERR_BUSERROR) != 0)
        no = np.zeros(b.n, bool)
        return _frames(t, value & _CAN_ID_MASK, h - s2 > 3, error, no, no, pairs, data, ok), ok

    def tokens(self, b: _Block) -> tuple[_Rows, np.ndarray]:
        """Every line, read by its tokens."""
        a, ntok = b.a, b.ntok
        (s0, e0), (s2, e2), (s3, e3) = b.token(0), b.token(2), b.token(3)
        # A 4th token is the direction, one letter after a space (python-can looks at " r"/" t").
        letter = b.at(s3) | np.uint8(32)
        direction = (e3 - s3 == 1) & ((letter == ord("r")) | (letter == ord("t")))
        ok = b.plain & ((ntok == 3) | ((ntok == 4) & direction))
        ok &= (b.at(s0) == ord("(")) & (b.at(e0 - 1) == ord(")"))
        t, good_t = _decimals(b, s0 + 1, e0 - 1)
        ok &= good_t
        # The first "#" of the frame token: after the 3 or 8 hex digits of a standard or extended
        # id on nearly every line (there, the digits before it say it is the first); on the other
        # lines, found by a search of the block's "#"s.
        h = s2.copy()
        for width in (3, 8):
            h[(h == s2) & (b.at(s2 + width) == ord("#"))] += width
        can_id, good_id = _integers(b, s2, h, 16, 8)
        rest = np.flatnonzero(~good_id)
        if len(rest):
            hashes = np.flatnonzero(a == ord("#"))
            k = np.searchsorted(hashes, s2[rest])
            h_rest = hashes[np.minimum(k, len(hashes) - 1)] if len(hashes) else e2[rest]
            h[rest] = np.where(ok[rest] & (k < len(hashes)) & (h_rest < e2[rest]), h_rest, s2[rest])
            can_id[rest], good_id[rest] = _integers(b, s2[rest], h[rest], 16, 8)
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
        data, good_data = _hex_payload(b, data_start, pairs)
        ok &= good_data
        value = can_id.astype(np.int64)
        error = ((value & CAN_ERR_FLAG) != 0) & ((value & CAN_ERR_BUSERROR) != 0)
        rows = _frames(t, value & _CAN_ID_MASK, h - s2 > 3, error, remote, fd & ~error, pairs, data, ok)
        return rows, ok | (b.plain & (ntok == 0))

    def line(self, text: str) -> list[can.Message]:
        self.counts.slow_lines += 1
        return list(CanutilsLogReader(io.StringIO(text)))


class _Asc(_Parser):
    """``  0.012345 1  123x   Rx   d 8 01 02 ...``, ``r``emote, ``ErrorFrame`` and ``CANFD`` lines."""

    def __init__(self, path: Path, bad_records: list[BadRecord], counts: ParseCounts, base: str) -> None:
        super().__init__(path, bad_records, counts)
        self.base = base
        self.radix = 10 if base == "dec" else 16

    def can_id(self, b: _Block, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        extended = (e > s) & ((b.at(e - 1) | 32) == ord("x"))
        value, ok = _integers(b, s, e - extended, self.radix, 8 if self.radix == 16 else 9)
        return value, extended, ok

    def fast(self, b: _Block) -> tuple[_Rows, np.ndarray]:
        ntok, radix = b.ntok, self.radix
        (s0, e0), (s1, e1), (s2, e2), (s3, e3), (s4, _), (s5, e5) = (b.token(j) for j in range(6))
        t, ok = _decimals(b, s0, e0)
        ok &= b.plain & (ntok >= 3)
        classic = ok & _digits_only(b, s1, e1, 9)
        canfd = ok & (e1 - s1 == 5) & _starts_with(b, s1, b"CANFD")

        # Classic: "<t> <ch> ErrorFrame ..." or "<t> <ch> <id> Rx|Tx d <dlc> <bytes...>" / "... r [dlc]".
        error = classic & (e2 - s2 >= 10) & _starts_with(b, s2, b"errorframe", fold=True)
        can_id, extended, id_ok = self.can_id(b, s2, e2)
        direction = b.at(s3) | np.uint8(32)
        classic &= ~error & (ntok >= 5) & (e3 - s3 >= 2) & ((direction == ord("r")) | (direction == ord("t")))
        classic &= ((b.at(s3 + 1) | 32) == ord("x")) & id_ok
        remote = classic & ((b.at(s4) | 32) == ord("r"))
        dlc, dlc_ok = _integers(b, s5, e5, radix, 2)
        data_frame = classic & ~remote & (ntok >= 6) & dlc_ok & (dlc <= CLASSIC)
        data_frame &= ntok >= 6 + dlc  # fewer bytes than the DLC: python-can's frame, then our DLC check
        length = np.where(data_frame, dlc, 0)
        first = np.full(b.n, 6)

        fd = np.zeros(b.n, bool)
        lines = np.flatnonzero(canfd)
        if len(lines):
            fd[lines] = True
            fd_rows = self.fd(b, lines)
            for column, values in zip((error, can_id, extended, remote, data_frame, length, first), fd_rows):
                column[lines] = values

        data, data_ok = _byte_tokens(b, first, length, radix, self.radix == 16)
        ok = (error | remote | data_frame) & data_ok
        return _frames(t, can_id, extended, error, remote, fd, length, data, ok), ok | (b.plain & (ntok == 0))

    def fd(self, b: _Block, lines: np.ndarray) -> tuple[np.ndarray, ...]:
        """The CAN FD lines among ``lines``: "<t> CANFD <ch> Rx|Tx ErrorFrame ..." or
        "<t> CANFD <ch> <dir> <id> [name] <brs> <esi> <dlc> <len> <bytes...> ...": their error,
        id, extended, remote, data, length and first payload token columns."""
        ntok = b.ntok[lines]
        (s2, e2), (s4, e4), (s5, e5) = (b.token(j, lines) for j in (2, 4, 5))
        ok = (ntok >= 5) & _digits_only(b, s2, e2, 9)
        error = ok & (e4 - s4 >= 10) & _starts_with(b, s4, b"errorframe", fold=True)
        ok &= ~error
        can_id, extended, id_ok = self.can_id(b, s4, e4)
        ok &= e5 - s5 <= _NAME_WIDTH
        named = (~_digits_only(b, s5, e5, _NAME_WIDTH)).astype(np.int64)  # python-can: a name unless isdigit()
        (s7, e7), (s8, e8) = b.token(7 + named, lines), b.token(8 + named, lines)
        dlc, dlc_ok = _integers(b, s7, e7, self.radix, 2)
        length, length_ok = _integers(b, s8, e8, 10, 2)
        ok &= id_ok & dlc_ok & length_ok & (ntok >= 10 + named)
        remote = ok & (length == 0)
        # A DLC that disagrees with the length makes python-can log a warning: its reader does that.
        data_frame = ok & ~remote & (_DLC_TO_LEN[np.minimum(dlc, 15)] == length) & (ntok >= 9 + named + length)
        return error, can_id, extended, remote, data_frame, np.where(data_frame, length, 0), 9 + named

    def line(self, text: str) -> list[can.Message]:
        if not ASC_MESSAGE_REGEX.match(text.strip()):
            # comments, triggers, statistics, ...: python-can skips every such line, and so does
            # it skip garbage; that is counted
            problem = asc_line_problem(text)
            if problem:
                raise _NotALine(problem)
            return []
        self.counts.slow_lines += 1
        # A blank first line ends python-can's header parsing; the header's base is passed in.
        return list(ASCReader(io.StringIO("\n" + text), base=self.base))


class _HeaderFeed:
    """The lines python-can's ASC header parser reads: saved header lines first, then the file's."""

    def __init__(self, lines: _LineReader, lineno: int, prefix: list[str]) -> None:
        self._lines = lines
        self._prefix = list(prefix)
        self.lineno = lineno
        self.seen: list[str] = []
        self.current = ""
        self.from_file = False
        self.new_lines = 0
        self.unterminated = False

    def __iter__(self) -> _HeaderFeed:
        return self

    def __next__(self) -> str:
        if self._prefix:
            line, self.from_file = self._prefix.pop(0), False
        else:
            raw = self._lines.readline()
            if not raw:
                raise StopIteration
            line = raw.decode("utf-8", "replace")
            self.lineno += 1
            self.new_lines += 1
            self.from_file = True
            self.unterminated = not line.endswith("\n")
        self.current = line
        self.seen.append(line)
        return line


def _asc_header(path: Path, lines: _LineReader, bad_records: list[BadRecord]) -> tuple[str, int] | None:
    """The header's number base and the number of lines python-can's header parsing consumes, read
    by that parser itself; None when the header does not parse (the file is not read further).
    A line it fails on is recorded and skipped, and the parse starts over with the lines before,
    as ``LogSource`` does."""
    prefix: list[str] = []
    lineno = 0
    while True:
        feed = _HeaderFeed(lines, lineno, prefix)
        reader = ASCReader(feed)  # type: ignore[arg-type]  # python-can's readers take any text file
        try:
            reader._extract_header()  # python-can's own header rules, not a copy of them
        except Exception as exc:
            if not feed.from_file or feed.new_lines == 0:
                _record(bad_records, path, feed.lineno or None, f"unreadable header: {type(exc).__name__}: {exc}",
                        feed.current)
                return None
            _record(bad_records, path, feed.lineno, f"{type(exc).__name__}: {exc}", feed.current)
            prefix, lineno = feed.seen[:-1], feed.lineno
            continue
        if feed.unterminated and feed.current.strip():
            _record(bad_records, path, feed.lineno, "truncated last line (no newline, no frame)", feed.current)
        elif feed.from_file and (problem := asc_line_problem(feed.current)):
            _record(bad_records, path, feed.lineno, problem, feed.current)  # the line that ended the header
        return reader.base, feed.lineno
