"""Decoding plans: one DBC message compiled once into numpy operations over all its frames.

cantools decodes one payload per call (two bitstruct unpacks, then one conversion per signal in
Python); a batch holds thousands of frames of a few dozen ids. A plan decodes every frame of one
message at once: the integer signals read from one 64-bit window of the payload are shifted,
masked, sign-extended and scaled together as one [frames, signals] array, so a message costs a
few numpy calls whatever its number of signals. It is compiled from cantools' own model of
the message (``Message.signal_tree``, ``Signal.start/length/byte_order/is_signed``, the signal's
conversion object) and reproduces what cantools 45 returns, bit for bit:

* Bits are read where cantools' bitstruct formats read them (``create_encode_decode_formats``):
  Motorola signals from the payload in network order, Intel signals from the byte-reversed
  payload, each format laid out by cantools' rules. In a DBC loaded with ``strict=False``, an
  overlapping signal shifts the ones after it, and a layout longer than the message makes every
  frame that reaches it fail ("Short data"); the plan lays them out the same way.
* A payload shorter than the message fails (``allow_truncated=False``); a longer one is cut to
  the message's length (``allow_excess=True``).
* Values follow the arithmetic of cantools' conversion objects in Python: an integer raw value
  times an integer scale plus an integer offset stays exact until ``float()``; with a float scale
  the raw value becomes a float before the product, as ``int * float`` does in Python.
* A multiplexer's scaled value, truncated by ``int()``, selects one branch of the signal tree;
  a value the tree has no branch for (or a NaN) fails the whole frame, as cantools raises.

What a plan cannot be sure to reproduce (signals over 64 bits, container messages, duplicate
signal names, unknown conversion classes, integer arithmetic beyond 64 bits) raises
``Unsupported`` at compile time; the decoder then hands that message's frames to cantools one
by one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from cantools.database.conversion import (
    BaseConversion,
    IdentityConversion,
    LinearConversion,
    LinearIntegerConversion,
    NamedSignalConversion,
)

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_FLOAT_MAX = float(np.finfo(np.float64).max)
_FLOAT_BITS = {16: (np.uint16, np.float16), 32: (np.uint32, np.float32), 64: (np.uint64, np.float64)}


class Unsupported(Exception):
    """A message a plan does not express; its frames go to cantools one by one."""


@dataclass(frozen=True)
class Block:
    """The values of some signals in the frames that carry them all: one multiplexing node's
    signals in the frames that reach it."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]  # where cantools puts each signal among those it returns for a frame
    rows: np.ndarray  # positions among the message's frames, ascending
    values: np.ndarray  # float64 [len(rows), len(names)]


# -- where the bits are -----------------------------------------------------------------------------


def _network_start(signal: Any) -> int:
    """cantools' ``start_bit``: a Motorola signal's start counted in network order (MSB first)."""
    if signal.byte_order == "big_endian":
        return 8 * (signal.start // 8) + (7 - signal.start % 8)
    return int(signal.start)


def _layout(signals: Sequence[Any], length: int) -> tuple[dict[str, tuple[bool, int]], bool]:
    """Each signal's offset in cantools' bitstruct formats of one multiplexing node, and whether
    both formats fit in the message: ``{name: (intel, offset)}``, ``fits``.

    The same walk as ``create_encode_decode_formats``: padding only where it is positive, the
    cursor of the next signal from where cantools *thinks* the last one ended."""
    bits = 8 * length
    where: dict[str, tuple[bool, int]] = {}
    cursor = start = 0
    for signal in sorted((s for s in signals if s.byte_order == "big_endian"), key=_network_start):
        cursor += max(0, _network_start(signal) - start)
        where[signal.name] = (False, cursor)
        cursor += signal.length
        start = _network_start(signal) + signal.length
    big_bits = cursor + max(0, bits - start)
    cursor, end = 0, bits
    for signal in reversed(signals):
        if signal.byte_order == "big_endian":
            continue
        cursor += max(0, end - (signal.start + signal.length))
        where[signal.name] = (True, cursor)
        cursor += signal.length
        end = signal.start
    little_bits = cursor + max(0, end)
    return where, big_bits <= bits and little_bits <= bits


@dataclass(frozen=True)
class _Bits:
    """One signal's raw bits: a 64-bit window of the payload (big- or little-endian, from byte
    ``byte``), where the signal starts in it, and whether it runs into the ninth byte."""

    intel: bool
    byte: int
    offset: int  # Intel: the signal's lowest bit in the window; Motorola: bits before its first one
    length: int
    spill: bool

    @classmethod
    def place(cls, intel: bool, position: int, length: int, message_length: int) -> _Bits:
        """``position``: the signal's first bit in cantools' format (MSB first over the payload,
        or over the byte-reversed payload for Intel)."""
        if intel:  # the bit position in the payload read as one little-endian integer
            position = 8 * message_length - position - length
        byte = min(position // 8, max(message_length, 8) - 8)
        offset = position - 8 * byte
        return cls(intel, byte, offset, length, offset + length > 64)

    def read(self, payload: _Payload) -> np.ndarray:
        word = payload.word(self.intel, self.byte)
        mask = np.uint64((1 << self.length) - 1)
        if self.intel:
            value = word >> self.offset
            if self.spill:
                value |= payload.byte(self.byte + 8) << (64 - self.offset)
        elif self.spill:
            rest = self.offset + self.length - 64
            value = (word << rest) | (payload.byte(self.byte + 8) >> (8 - rest))
        else:
            value = word >> (64 - self.offset - self.length)
        return value & mask


class _Payload:
    """The payloads of some frames of one message, and the 64-bit windows read from them (each
    window built once, whatever the number of signals in it)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self._words: dict[tuple[bool, int], np.ndarray] = {}

    def word(self, intel: bool, byte: int) -> np.ndarray:
        word = self._words.get((intel, byte))
        if word is None:
            window = np.ascontiguousarray(self.data[:, byte:byte + 8])
            word = window.view("<u8" if intel else ">u8").reshape(-1).astype(np.uint64)
            self._words[(intel, byte)] = word
        return word

    def byte(self, index: int) -> np.ndarray:
        return self.data[:, index].astype(np.uint64)

    def take(self, index: np.ndarray) -> _Payload:
        return _Payload(self.data[index])


# -- what the bits mean ----------------------------------------------------------------------------

# A conversion gives the float64 values and, when cantools' scaled value is a Python int, that
# int exactly (int64 or uint64): a multiplexer is selected by it.
_Converted = tuple[np.ndarray, np.ndarray | None]


def _int_dtype(*values: int) -> type[np.integer] | None:
    """The numpy integer type that holds every value of an integer computation exactly."""
    low, high = min(values), max(values)
    for bounds, dtype in ((_INT64, np.int64), (_UINT64, np.uint64)):
        if bounds[0] <= low and high <= bounds[1]:
            return dtype
    return None


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unsupported(f"{what} {value!r} is not an int or a float")
    return value


def _as_float(value: int | float, what: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise Unsupported(f"{what} {value!r} is beyond a float") from None


def _converter(signal: Any) -> Callable[[np.ndarray], _Converted]:
    """``conversion.raw_to_scaled(raw, decode_choices=False)`` over an array of raw values
    (uint64, int64 or float64), then ``float()``."""
    conversion = signal.conversion
    if type(conversion) is NamedSignalConversion:  # its numbers are converted by a plain one
        conversion = BaseConversion.factory(conversion.scale, conversion.offset, None, conversion.is_float)
    if type(conversion) is IdentityConversion:  # the raw value itself, an int or a float
        return lambda raw: (raw.astype(np.float64), None if raw.dtype.kind == "f" else raw)
    if type(conversion) not in (LinearIntegerConversion, LinearConversion):
        raise Unsupported(f"signal {signal.name}: conversion {type(conversion).__name__}")
    scale = _number(conversion.scale, f"signal {signal.name}: scale")
    offset = _number(conversion.offset, f"signal {signal.name}: offset")
    float_offset = _as_float(offset, f"signal {signal.name}: offset")
    if conversion.is_float or isinstance(scale, float):  # raw * scale in floats, as Python does
        float_scale = _as_float(scale, f"signal {signal.name}: scale")
        return lambda raw: (raw.astype(np.float64) * float_scale + float_offset, None)
    # an int raw value times an int scale: exact, as Python ints are
    if signal.is_signed:
        low, high = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    else:
        low, high = 0, (1 << signal.length) - 1
    products = (low * scale, high * scale)
    if isinstance(offset, int):
        exact_sum = _int_dtype(low, high, *products, *(p + offset for p in products))
        if exact_sum is None:
            raise Unsupported(f"signal {signal.name}: raw * {scale} + {offset} needs more than 64 bits")
        dtype: type[np.integer] = exact_sum

        def exact(raw: np.ndarray) -> _Converted:
            value = raw.astype(dtype) * dtype(scale) + dtype(offset)
            return value.astype(np.float64), value

        return exact
    exact_product = _int_dtype(low, high, *products)
    if exact_product is None:
        raise Unsupported(f"signal {signal.name}: raw * {scale} needs more than 64 bits")
    product: type[np.integer] = exact_product
    return lambda raw: ((raw.astype(product) * product(scale)).astype(np.float64) + float_offset, None)


def _reader(signal: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The raw value from its bits, as bitstruct's ``u``, ``s`` and ``f`` formats give it."""
    length = signal.length
    if signal.conversion.is_float:
        if length not in _FLOAT_BITS:
            raise Unsupported(f"signal {signal.name}: a {length}-bit float")
        bits, floats = _FLOAT_BITS[length]
        return lambda raw: raw.astype(bits).view(floats).astype(np.float64)
    if signal.is_signed:
        unused = 64 - length
        return lambda raw: (raw << unused).view(np.int64) >> unused
    return lambda raw: raw


# Up to 2**53 every integer is a float: an integer computation that stays below it gives the same
# result in float64, where one numpy expression decodes a whole window of signals at once.
_EXACT = 1 << 53


def _linear(signal: Any) -> tuple[float, float] | None:
    """``(scale, offset)`` when ``float(raw) * scale + offset`` in float64 is, bit for bit, what
    cantools computes for this integer signal, for every raw value; None otherwise."""
    if signal.conversion.is_float or (not signal.is_signed and signal.length == 64):
        return None  # a float, or a raw value an int64 does not hold
    conversion = signal.conversion
    if type(conversion) is NamedSignalConversion:
        conversion = BaseConversion.factory(conversion.scale, conversion.offset, None, conversion.is_float)
    if type(conversion) is IdentityConversion:
        return 1.0, 0.0  # float(raw) * 1.0 + 0.0 is float(raw)
    if type(conversion) not in (LinearIntegerConversion, LinearConversion):
        return None
    scale, offset = conversion.scale, conversion.offset
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in (scale, offset)):
        return None
    if not -_FLOAT_MAX <= offset <= _FLOAT_MAX:
        return None  # Python raises on float + such an int
    if isinstance(scale, float):
        return scale, float(offset)  # Python's own steps: float(raw) * scale, + float(offset)
    low = -(1 << (signal.length - 1)) if signal.is_signed else 0
    high = (1 << (signal.length - (1 if signal.is_signed else 0))) - 1
    exact = [low * scale, high * scale]
    if isinstance(offset, int):
        exact += [offset, low * scale + offset, high * scale + offset]
    elif offset == 0 and np.signbit(offset):
        return None  # float(0) + -0.0 is 0.0, where (0.0 * -scale) + -0.0 is -0.0
    if max(abs(x) for x in exact) > _EXACT:
        return None
    return float(scale), float(offset)


@dataclass(frozen=True)
class _Window:
    """Integer signals read from one 64-bit window and scaled together: ``[rows, signals]``."""

    intel: bool
    byte: int
    columns: np.ndarray  # where each goes in its node's block (ascending)
    shifts: np.ndarray  # uint64
    masks: np.ndarray  # uint64
    unused: np.ndarray | None  # uint64 bits above a signed value (None: no signed value)
    scales: np.ndarray
    offsets: np.ndarray

    def values(self, payload: _Payload) -> np.ndarray:
        raw = (payload.word(self.intel, self.byte)[:, None] >> self.shifts) & self.masks
        if self.unused is None:
            numbers = raw.view(np.int64)
        else:  # two's complement: the sign bit moved to bit 63, then an arithmetic shift back
            numbers = (raw << self.unused).view(np.int64) >> self.unused.view(np.int64)
        values = numbers.astype(np.float64)
        values *= self.scales
        values += self.offsets
        return values


# -- the multiplexing tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Single:
    """A signal decoded on its own: floats, multiplexers, bits over a window, big integers."""

    column: int
    bits: _Bits
    raw: Callable[[np.ndarray], np.ndarray]
    convert: Callable[[np.ndarray], _Converted]

    def values(self, payload: _Payload) -> _Converted:
        return self.convert(self.raw(self.bits.read(payload)))


@dataclass(frozen=True)
class _Node:
    """One level of the multiplexing tree: its signals, and for each multiplexer among them
    (a column of the block) the node of each of its values."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]
    windows: tuple[_Window, ...]
    singles: tuple[_Single, ...]
    muxes: tuple[tuple[_Single, dict[int, _Node]], ...]
    fits: bool  # False: cantools' formats are longer than the message; every frame here fails

    @cached_property
    def layout(self) -> tuple[Any, ...] | None:
        """Where and how this node's values are read, when that is all it does (windows only: no
        float, multiplexer or spilling signal, no deeper level): two branches of a multiplexer
        with the same layout (cells 1-3 of module 1 and cells 4-6 of module 2, say) are read in
        one pass. None otherwise."""
        if not self.fits or self.singles or self.muxes or not self.names:
            return None
        return (len(self.names), *((w.intel, w.byte, w.columns.tobytes(), w.shifts.tobytes(), w.masks.tobytes(),
                                    None if w.unused is None else w.unused.tobytes(), w.scales.tobytes(),
                                    w.offsets.tobytes()) for w in self.windows))

    def values(self, payload: _Payload, rows: int) -> np.ndarray:
        """The values of its windows' signals: ``[rows, names]`` (singles' columns left to fill)."""
        if len(self.windows) == 1 and not self.singles:
            return self.windows[0].values(payload)  # the common case: one window has every column, in order
        values = np.empty((rows, len(self.names)))
        for window in self.windows:
            values[:, window.columns] = window.values(payload)
        return values


def _window(intel: bool, byte: int, members: list[tuple[int, Any, _Bits, tuple[float, float]]]) -> _Window:
    columns, signals, bits, linear = zip(*members)
    return _Window(
        intel, byte,
        np.array(columns, np.intp),
        np.array([b.offset if intel else 64 - b.offset - b.length for b in bits], np.uint64),
        np.array([(1 << b.length) - 1 for b in bits], np.uint64),
        np.array([64 - s.length if s.is_signed else 0 for s in signals], np.uint64)
        if any(s.is_signed for s in signals) else None,
        np.array([scale for scale, _ in linear], np.float64),
        np.array([offset for _, offset in linear], np.float64),
    )


def _compile_node(message: Any, tree: Sequence[Any], names: Mapping[str, str], ranks: Iterator[int]) -> _Node:
    # cantools returns a node's own signals first, then each multiplexer's branch in turn:
    # numbering the tree in that order (pre-order) gives every signal its place in a frame.
    entries = [(item, None) if isinstance(item, str) else next(iter(item.items())) for item in tree]
    signals = [message.get_signal_by_name(name) for name, _ in entries]
    where, fits = _layout(signals, message.length)
    windows: dict[tuple[bool, int], list[tuple[int, Any, _Bits, tuple[float, float]]]] = {}
    singles: dict[str, _Single] = {}
    own_ranks = []
    for column, ((_, branches), signal) in enumerate(zip(entries, signals)):
        if not 1 <= signal.length <= 64:
            raise Unsupported(f"signal {signal.name}: {signal.length} bits")
        own_ranks.append(next(ranks))
        intel, position = where[signal.name]
        bits = _Bits.place(intel, position, signal.length, message.length)
        linear = _linear(signal)
        if linear is not None and branches is None and not bits.spill:
            windows.setdefault((bits.intel, bits.byte), []).append((column, signal, bits, linear))
        else:
            singles[signal.name] = _Single(column, bits, _reader(signal), _converter(signal))
    muxes = tuple(
        (singles[name], {int(value): _compile_node(message, subtree, names, ranks) for value, subtree in branches.items()})
        for name, branches in entries
        if branches is not None
    )
    return _Node(
        tuple(names[s.name] for s in signals),
        tuple(own_ranks),
        tuple(_window(intel, byte, members) for (intel, byte), members in windows.items()),
        tuple(singles.values()),
        muxes,
        fits,
    )


# -- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagePlan:
    """Decodes every frame of one DBC message at once, as cantools decodes each one."""

    length: int  # bytes the message needs; a shorter payload fails
    width: int  # payload bytes the plan reads
    root: _Node

    @classmethod
    def compile(cls, message: Any, names: Mapping[str, str] | None = None) -> MessagePlan:
        """``message``: a ``cantools.database.can.Message``; ``names``: the name each signal's
        values get (default: the signal's own). Raises ``Unsupported``."""
        if message.is_container:
            raise Unsupported("a container message")
        signal_names = [s.name for s in message.signals]
        if len(set(signal_names)) != len(signal_names):
            raise Unsupported("two signals share a name")
        length = int(message.length)
        if not 0 <= length <= 64:
            raise Unsupported(f"a message of {length} bytes")
        names = names if names is not None else {name: name for name in signal_names}
        return cls(length, max(length, 8), _compile_node(message, message.signal_tree, names, itertools.count()))

    def decode(self, data: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, list[Block]]:
        """``data``: uint8 [n, 8 or more], zero-padded payloads of n frames of this message;
        ``length``: their real lengths. Returns which frames decode (cantools raises on the
        others) and the signals' values in those frames."""
        failed = length < self.length
        blocks: list[Block] = []
        rows = np.flatnonzero(~failed)
        if rows.size:
            payload = data[rows] if rows.size < len(length) else data
            if payload.shape[1] < self.width:
                payload = np.pad(payload, ((0, 0), (0, self.width - payload.shape[1])))
            with np.errstate(all="ignore"):  # inf and NaN are values here, as in Python's floats
                self._run(self.root, rows, _Payload(payload), failed, blocks)
        if not failed.any():
            return ~failed, blocks
        kept = []
        for block in blocks:
            keep = ~failed[block.rows]
            if keep.all():
                kept.append(block)
            elif keep.any():
                kept.append(Block(block.names, block.ranks, block.rows[keep], block.values[keep]))
        return ~failed, kept

    def _run(self, node: _Node, rows: np.ndarray, payload: _Payload, failed: np.ndarray, out: list[Block]) -> None:
        if not node.fits:
            failed[rows] = True
            return
        values = node.values(payload, len(rows))
        selectors = {}
        for single in node.singles:
            selectors[single.column] = converted = single.values(payload)
            values[:, single.column] = converted[0]
        if node.names:
            out.append(Block(node.names, node.ranks, rows, values))
        for selector, branches in node.muxes:
            self._select(selectors[selector.column], branches, rows, payload, failed, out)

    def _select(self, selector: _Converted, branches: dict[int, _Node], rows: np.ndarray, payload: _Payload,
                failed: np.ndarray, out: list[Block]) -> None:
        values, exact = selector
        if exact is None:  # int() of a float: truncated; a NaN or an infinity raises
            valid = np.isfinite(values)
            failed[rows[~valid]] = True
            keys: np.ndarray = np.trunc(values[valid])
            positions = np.flatnonzero(valid)
        else:
            keys, positions = exact, np.arange(len(rows))
        found, group = np.unique(keys, return_inverse=True)
        if len(found) == 1:
            order, bounds = np.arange(len(keys)), np.array([0, len(keys)])
        else:
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(found) + 1))
        alike: dict[Any, list[tuple[_Node, np.ndarray]]] = {}  # branches read in one pass, by layout
        for i, key in enumerate(found.tolist()):
            chosen = positions[order[bounds[i]:bounds[i + 1]]]
            branch = branches.get(int(key))
            if branch is None:  # cantools: "expected multiplexer id ..., but got ..."
                failed[rows[chosen]] = True
            elif (layout := branch.layout) is not None and len(chosen) < len(rows):
                alike.setdefault(layout, []).append((branch, chosen))
            elif len(chosen) == len(rows):
                self._run(branch, rows, payload, failed, out)
            else:
                self._run(branch, rows[chosen], payload.take(chosen), failed, out)
        for members in alike.values():
            if len(members) == 1:
                branch, chosen = members[0]
                self._run(branch, rows[chosen], payload.take(chosen), failed, out)
                continue
            every = np.concatenate([chosen for _, chosen in members])
            values = members[0][0].values(payload.take(every), len(every))  # the same arithmetic, row by row
            at = 0
            for branch, chosen in members:
                out.append(Block(branch.names, branch.ranks, rows[chosen], values[at:at + len(chosen)]))
                at += len(chosen)
