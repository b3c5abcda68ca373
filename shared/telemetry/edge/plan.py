"""Decoding plans: one DBC message compiled once into numpy operations over all its frames.

cantools decodes one payload per call (two bitstruct unpacks, then one conversion per signal in
Python); a batch holds thousands of frames of a few dozen ids. A plan says how every signal of
one message is read: an integer signal (or an IEEE float) from one 64-bit window of the payload,
shifted, masked, sign-extended and scaled. A ``Program`` holds the plans of every message of a
decoder as one table of such cells and decodes a whole batch, all its ids at once, in a fixed
number of numpy calls whatever its number of messages and signals. A plan is compiled from cantools' own model of
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
from typing import Any

import numpy as np
from cantools.database.conversion import (
    BaseConversion,
    IdentityConversion,
    LinearConversion,
    LinearIntegerConversion,
    NamedSignalConversion,
)

from .arrays import distinct

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_FLOAT_MAX = float(np.finfo(np.float64).max)
_FLOAT_BITS = {16: (np.uint16, np.float16), 32: (np.uint32, np.float32), 64: (np.uint64, np.float64)}


class Unsupported(Exception):
    """A message a plan does not express; its frames go to cantools one by one."""


@dataclass(frozen=True)
class Block:
    """The values of some signals in the frames that carry them all (``MessagePlan.decode`` and
    the decoder's cantools fallback give one block per signal)."""

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


def _float_steps(signal: Any) -> tuple[float, float, bool] | None:
    """What ``_converter`` does to an IEEE float signal's value (a float64 from its 16, 32 or 64
    bits): nothing (``identity``), or ``value * scale + offset`` in float64; None for a signal
    that is no such float (call it after ``_converter``, which refuses what it cannot convert)."""
    conversion = signal.conversion
    if not conversion.is_float or signal.length not in _FLOAT_BITS:
        return None
    if type(conversion) is NamedSignalConversion:
        conversion = BaseConversion.factory(conversion.scale, conversion.offset, None, conversion.is_float)
    if type(conversion) is IdentityConversion:
        return 1.0, 0.0, True
    if type(conversion) not in (LinearIntegerConversion, LinearConversion):
        return None
    return float(conversion.scale), float(conversion.offset), False


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
    """Integer signals read from one 64-bit window, each shifted, masked, sign-extended, then
    ``float(value) * scale + offset`` in float64 (``Program._windows`` computes them)."""

    intel: bool
    byte: int
    columns: np.ndarray  # where each goes in its node's block (ascending)
    shifts: np.ndarray  # uint64
    masks: np.ndarray  # uint64
    unused: np.ndarray | None  # uint64 bits above a signed value (None: no signed value)
    scales: np.ndarray
    offsets: np.ndarray


# -- the multiplexing tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Single:
    """A signal decoded on its own: floats, multiplexers, bits over a window, big integers."""

    column: int
    bits: _Bits
    raw: Callable[[np.ndarray], np.ndarray]
    convert: Callable[[np.ndarray], _Converted]
    floating: tuple[float, float, bool] | None = None  # an IEEE float's (scale, offset, identity): _float_steps

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
            singles[signal.name] = _Single(column, bits, _reader(signal), _converter(signal), _float_steps(signal))
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
        others) and each signal's values in the frames that carry it (a block per signal), read
        by a ``Program`` of this plan alone."""
        failed = length < self.length
        if data.shape[1] < self.width:
            data = np.pad(data, ((0, 0), (0, self.width - data.shape[1])))
        program = Program()
        program.add(self)
        rows = np.flatnonzero(~failed)
        cells = program.run(data, rows, np.zeros(len(rows), np.int64), failed)
        order = np.lexsort((cells.rows, cells.names))
        numbers, at = np.unique(cells.names[order], return_index=True)
        blocks = []
        for number, lo, hi in zip(numbers.tolist(), at.tolist(), [*at[1:].tolist(), len(order)]):
            chosen = order[lo:hi]
            blocks.append(Block((program.names[number],), (int(cells.ranks[chosen[0]]),), cells.rows[chosen],
                                cells.values[chosen][:, None]))
        return ~failed, blocks


def only(plan: MessagePlan, keep: frozenset[str]) -> MessagePlan:
    """The plan reading just the signals named in ``keep`` (by the names they travel under) and
    the multiplexers, with the whole tree of branches: run by a ``Program``, a frame fails where
    the whole plan's does (a multiplexer value without a branch, a layout longer than the
    message), and each kept signal gets the whole plan's value, computed the same way. The
    multiplexers' own values come too (the caller leaves out what it did not ask for)."""
    return MessagePlan(plan.length, plan.width, _only(plan.root, keep))


def _only(node: _Node, keep: frozenset[str]) -> _Node:
    selectors = {selector.column for selector, _ in node.muxes}
    windows = []
    for window in node.windows:
        wanted = np.array([node.names[column] in keep for column in window.columns.tolist()], bool)
        if wanted.all():
            windows.append(window)
        elif wanted.any():
            windows.append(_Window(window.intel, window.byte, window.columns[wanted], window.shifts[wanted],
                                   window.masks[wanted], None if window.unused is None else window.unused[wanted],
                                   window.scales[wanted], window.offsets[wanted]))
    return _Node(
        node.names,
        node.ranks,
        tuple(windows),
        tuple(s for s in node.singles if node.names[s.column] in keep or s.column in selectors),
        tuple((selector, {value: _only(child, keep) for value, child in branches.items()})
              for selector, branches in node.muxes),
        node.fits,
    )


# -- many plans over one batch -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cells:
    """Decoded values, one per (frame, signal): the frame's row in the batch, the signal's number
    (``Program.names``), its place among the values cantools returns for the frame, the value."""

    rows: np.ndarray  # int64
    names: np.ndarray  # int64
    ranks: np.ndarray  # int64
    values: np.ndarray  # float64


@dataclass(frozen=True)
class _Mux:
    """A multiplexer of a node: its selector, and the node number of each of its values (sorted),
    or, when a value is beyond what a float64 holds exactly, the branches by value."""

    selector: _Single
    keys: np.ndarray | None  # int64, ascending
    children: np.ndarray  # node numbers, in the order of keys
    by_key: dict[int, int]

    def children_of(self, selector: _Converted) -> np.ndarray:
        """The node number each frame's selector value picks, -1 where none (cantools raises)."""
        values, exact = selector
        if exact is None:  # int() of a float: truncated; a NaN or an infinity raises
            valid = np.isfinite(values)
            keys: np.ndarray = np.trunc(values)
        else:
            keys, valid = exact, np.ones(len(exact), bool)
        child = np.full(len(keys), -1, np.int64)
        if self.keys is None:  # a value beyond 2**53: Python's ints decide, one value at a time
            for i in np.flatnonzero(valid).tolist():
                child[i] = self.by_key.get(int(keys[i]), -1)
            return child
        if not len(self.keys):
            return child
        inside = valid & (keys >= int(self.keys[0])) & (keys <= int(self.keys[-1]))  # exact: |key| <= 2**53
        wanted = keys[inside].astype(np.int64)
        at = np.searchsorted(self.keys, wanted)
        child[inside] = np.where(self.keys[at] == wanted, self.children[at], -1)
        return child


@dataclass(frozen=True)
class _Extra:
    """What a node reads one signal at a time (its singles, each with its signal's number and
    rank) and its multiplexers."""

    width: int  # payload bytes its message's plan reads
    singles: tuple[tuple[_Single, int, int], ...]
    muxes: tuple[_Mux, ...]


class Program:
    """The plans of every message of a decoder as one set of tables, so that a batch of frames
    of many ids is decoded in a fixed number of numpy calls, not a few per message: every node of
    every plan is numbered, and every signal read from a 64-bit window (integers with an exact
    float64 scaling, and IEEE floats: nearly all) is one row of a table of cells (which window,
    shift, mask, sign, scale, offset, name, rank). A batch is expanded into one (frame, cell)
    pair per value and computed at once. The rest (multiplexers, signals that spill past a
    window, integers whose scaling needs exact big-integer arithmetic) is read node by node by
    its ``_Single``, and a multiplexer's value picks each frame's next node, level after level."""

    _KINDS = 2 * 57  # (byte, intel) of a window: byte * 2 + intel; a 64-byte payload's start at bytes 0-56

    def __init__(self) -> None:
        self.names: list[str] = []  # signal number -> name
        self._numbers: dict[str, int] = {}
        self._nodes: list[_Node] = []  # kept, so that id() of a numbered node stays its own
        self._node_numbers: dict[int, int] = {}
        self._fits: list[bool] = []
        self._extra: list[_Extra | None] = []
        self._span: list[tuple[int, int]] = []  # node -> (first cell, cells)
        self._cells: list[tuple[int, int, int, int, float, float, int, int, int, bool]] = []
        self._tables: dict[str, np.ndarray] | None = None

    def name_number(self, name: str) -> int:
        number = self._numbers.get(name)
        if number is None:
            number = self._numbers[name] = len(self.names)
            self.names.append(name)
        return number

    def add(self, plan: MessagePlan) -> int:
        """The number of the plan's root node (its tree numbered, once)."""
        return self._add(plan.root, plan.width)

    def _add(self, node: _Node, width: int) -> int:
        number = self._node_numbers.get(id(node))
        if number is not None:
            return number
        number = self._node_numbers[id(node)] = len(self._nodes)
        self._nodes.append(node)
        self._tables = None
        names = [self.name_number(name) for name in node.names]
        first = len(self._cells)
        for window in node.windows:
            unused = window.unused if window.unused is not None else np.zeros(len(window.columns), np.uint64)
            for j, column in enumerate(window.columns.tolist()):
                self._cells.append((window.byte * 2 + window.intel, int(window.shifts[j]), int(window.masks[j]),
                                    int(unused[j]), float(window.scales[j]), float(window.offsets[j]),
                                    names[column], node.ranks[column], 0, False))
        selectors = {selector.column for selector, _ in node.muxes}
        singles = []
        for single in node.singles:
            bits, steps = single.bits, single.floating
            if steps is None or bits.spill or single.column in selectors:
                singles.append((single, names[single.column], node.ranks[single.column]))
                continue
            # an IEEE float read from its window: a cell too
            self._cells.append((bits.byte * 2 + bits.intel, bits.offset if bits.intel else 64 - bits.offset - bits.length,
                                (1 << bits.length) - 1, 0, steps[0], steps[1], names[single.column],
                                node.ranks[single.column], bits.length, steps[2]))
        self._span.append((first, len(self._cells) - first))
        self._fits.append(node.fits)
        self._extra.append(None)
        if singles or node.muxes:
            muxes = []
            for selector, branches in node.muxes:
                by_key = {key: self._add(child, width) for key, child in branches.items()}
                keys = sorted(by_key)
                exact = all(-_EXACT <= key <= _EXACT for key in keys)
                muxes.append(_Mux(selector, np.array(keys, np.int64) if exact else None,
                                  np.array([by_key[key] for key in keys], np.int64), by_key))
            self._extra[number] = _Extra(width, tuple(singles), tuple(muxes))
        return number

    def _table(self) -> dict[str, np.ndarray]:
        if self._tables is None:
            cells = list(zip(*self._cells)) if self._cells else [()] * 10
            self._tables = {
                "fits": np.array(self._fits, bool),
                "extra": np.array([e is not None for e in self._extra], bool),
                "first": np.array([s for s, _ in self._span], np.int64),
                "count": np.array([n for _, n in self._span], np.int64),
                "kind": np.array(cells[0], np.int64),
                "shift": np.array(cells[1], np.uint64),
                "mask": np.array(cells[2], np.uint64),
                "unused": np.array(cells[3], np.uint64),
                "scale": np.array(cells[4], np.float64),
                "offset": np.array(cells[5], np.float64),
                "name": np.array(cells[6], np.int64),
                "rank": np.array(cells[7], np.int64),
                "float": np.array(cells[8], np.int64),  # an IEEE float's bits (16, 32, 64), or 0
                "identity": np.array(cells[9], bool),  # a float taken as it is (no scale, no offset)
            }
        return self._tables

    def run(self, data: np.ndarray, rows: np.ndarray, roots: np.ndarray, failed: np.ndarray) -> Cells:
        """The values of the frames at ``rows`` of a batch (``data``: its payload matrix), each
        decoded by the plan whose root is ``roots``; the payloads must be at least as long as
        their message (``MessagePlan.decode`` checks that). A frame that fails (a layout longer
        than the message, a multiplexer value without a branch) is set in ``failed`` (indexed by
        row) and gives no value. A batch of many values is run a slice of frames at a time, so
        that the value arrays of one step stay small (about ``_MOST_CELLS`` values; the payload
        words are read for the whole batch, once a step, a few bytes a frame)."""
        tables = self._table()
        ends = np.cumsum(tables["count"][roots])
        if len(ends) > 1 and ends[-1] > _MOST_CELLS:
            cuts = [0, *np.searchsorted(ends, np.arange(_MOST_CELLS, int(ends[-1]), _MOST_CELLS)).tolist(), len(rows)]
            parts = [self._run(data, rows[lo:hi], roots[lo:hi], failed) for lo, hi in itertools.pairwise(cuts) if hi > lo]
            return Cells(*(np.concatenate([getattr(c, f) for c in parts]) for f in ("rows", "names", "ranks", "values")))
        return self._run(data, rows, roots, failed)

    def _run(self, data: np.ndarray, rows: np.ndarray, roots: np.ndarray, failed: np.ndarray) -> Cells:
        tables = self._table()
        window_rows: list[np.ndarray] = []
        window_cells: list[np.ndarray] = []
        parts: list[tuple[np.ndarray, int, int, np.ndarray]] = []
        with np.errstate(all="ignore"):  # inf and NaN are values here, as in Python's floats
            while len(rows):
                fits = tables["fits"][roots]
                if not fits.all():
                    failed[rows[~fits]] = True
                    rows, roots = rows[fits], roots[fits]
                count = tables["count"][roots]
                if total := int(count.sum()):
                    ends = np.cumsum(count)
                    window_rows.append(np.repeat(rows, count))
                    window_cells.append(np.arange(total) + np.repeat(tables["first"][roots] - (ends - count), count))
                extra = tables["extra"][roots]
                if not extra.any():
                    break
                rows, roots = self._extras(data, rows[extra], roots[extra], failed, parts)
            cells = self._windows(data, np.concatenate(window_rows) if window_rows else np.empty(0, np.int64),
                                  np.concatenate(window_cells) if window_cells else np.empty(0, np.int64))
        if parts:
            cells = Cells(np.concatenate([cells.rows, *(p[0] for p in parts)]),
                          np.concatenate([cells.names, *(np.full(len(p[0]), p[1], np.int64) for p in parts)]),
                          np.concatenate([cells.ranks, *(np.full(len(p[0]), p[2], np.int64) for p in parts)]),
                          np.concatenate([cells.values, *(p[3] for p in parts)]))
        if failed[cells.rows].any():  # cantools raises for the whole frame: none of its values
            keep = ~failed[cells.rows]
            cells = Cells(cells.rows[keep], cells.names[keep], cells.ranks[keep], cells.values[keep])
        return cells

    def _extras(self, data: np.ndarray, rows: np.ndarray, roots: np.ndarray, failed: np.ndarray,
                parts: list[tuple[np.ndarray, int, int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The singles of the nodes at ``roots``, read node by node, and the next level's nodes."""
        next_rows: list[np.ndarray] = []
        next_roots: list[np.ndarray] = []
        for number in distinct(roots).tolist():
            extra = self._extra[number]
            assert extra is not None
            at = rows[roots == number] if len(roots) > 1 else rows
            payload = data[at]
            if payload.shape[1] < extra.width:
                payload = np.pad(payload, ((0, 0), (0, extra.width - payload.shape[1])))
            words = _Payload(payload)
            selectors: dict[int, _Converted] = {}
            for single, name, rank in extra.singles:
                selectors[single.column] = converted = single.values(words)
                parts.append((at, name, rank, converted[0]))
            for mux in extra.muxes:
                child = mux.children_of(selectors[mux.selector.column])
                found = child >= 0
                if not found.all():  # cantools: "expected multiplexer id ..., but got ..."
                    failed[at[~found]] = True
                next_rows.append(at[found])
                next_roots.append(child[found])
        if not next_rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(next_rows), np.concatenate(next_roots)

    def _windows(self, data: np.ndarray, rows: np.ndarray, cells: np.ndarray) -> Cells:
        """Every (frame, window cell) pair at once: the integer's bits shifted and masked, its sign
        bit moved to bit 63 and shifted back (two's complement), then ``float(value) * scale +
        offset``; an IEEE float's bits as that float, then ``_converter``'s steps."""
        tables = self._table()
        if not len(cells):
            return Cells(rows, cells, cells, np.empty(0))
        kind = tables["kind"][cells]
        present = np.flatnonzero(np.bincount(kind, minlength=self._KINDS))
        if len(present) == 1:
            word = _window_words(data, int(present[0]))[rows]
        else:
            where = np.zeros(self._KINDS, np.int64)
            where[present] = np.arange(len(present))
            words = np.stack([_window_words(data, k) for k in present.tolist()])
            word = words[where[kind], rows]
        raw = (word >> tables["shift"][cells]) & tables["mask"][cells]
        unused = tables["unused"][cells]
        values = ((raw << unused).view(np.int64) >> unused.view(np.int64)).astype(np.float64)
        scales, offsets = tables["scale"][cells], tables["offset"][cells]
        values *= scales
        values += offsets
        bits = tables["float"][cells]
        if bits.any():  # IEEE floats: their bits as the float they are, then _converter's steps
            for size, (unsigned, floating) in _FLOAT_BITS.items():
                if not (these := bits == size).any():
                    continue
                value = raw[these].astype(unsigned).view(floating).astype(np.float64)
                linear = ~tables["identity"][cells[these]]
                value[linear] = value[linear] * scales[these][linear] + offsets[these][linear]
                values[these] = value
        return Cells(rows, tables["name"][cells], tables["rank"][cells], values)


_MOST_CELLS = 1 << 16  # values computed in one step (a few MB of working arrays)


def _window_words(data: np.ndarray, kind: int) -> np.ndarray:
    """Every frame's 64-bit window of kind ``byte * 2 + intel`` as uint64."""
    byte, intel = divmod(kind, 2)
    window = np.ascontiguousarray(data[:, byte:byte + 8])
    return window.view("<u8" if intel else ">u8").reshape(-1).astype(np.uint64)
