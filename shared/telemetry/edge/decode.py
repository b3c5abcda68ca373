"""Decoding CAN frames into signal columns with the vehicle's DBC files (cantools).

Load once, index once: the DBCs are loaded and their frames indexed by (id, extended) when the
decoder is built, and each message is compiled into a vectorised plan (``plan.py``), all of them
held by one ``Program``. Decoding a batch then groups its frames by id and decodes the frames of
every planned message at once, in a fixed number of numpy calls whatever its number of ids and
signals, giving exactly what cantools' ``decode`` gives frame by frame. A message the plan
cannot express is decoded by cantools frame by frame (``fallback_messages``); ``decode_each``
decodes a whole batch that way and is the reference the vectorised path is tested against.

Values are cantools' scaled numbers (``decode_choices=False``). Signals are named
``<Message>.<Signal>``. Error frames, remote frames, ids no DBC knows and frames that fail to
decode are counted, never fatal; so are values that are not finite or beyond ``MAX_MAGNITUDE``
(left out, counted per signal).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import can
import cantools
import numpy as np

from .arrays import distinct, groups
from .errors import DbcError
from .frames import Frames
from .messages import FlatBatch
from .plan import Block, Cells, MessagePlan, Program, Unsupported

LOG = logging.getLogger(__name__)

# A value beyond this is no measurement (a float signal's garbage bits): it is left out and
# counted, as NaN and infinities are, so that no sum or square of a window's values can overflow.
MAX_MAGNITUDE = 1e100


@dataclass
class DecodedBatch:
    """The decoded samples of a batch, flat (see ``FlatBatch``), plus what happened to each frame.
    ``fallback``: frames handed to cantools one by one (by ``decode_frames``: the frames of
    ``DbcDecoder.fallback_messages``; by ``decode_each``: every frame of a known id)."""

    batch: FlatBatch
    frames: Counter[str]
    unknown_ids: Counter[int] = field(default_factory=Counter)
    decode_errors: Counter[int] = field(default_factory=Counter)
    non_finite: int = 0
    fallback: int = 0
    event_rows: dict[str, np.ndarray] = field(default_factory=dict)  # counter -> the rows it counted
    non_finite_signals: Counter[str] = field(default_factory=Counter)  # signal -> values left out
    length_mismatch: Counter[int] = field(default_factory=Counter)  # id -> frames not of the DBC's length
    length_reasons: dict[int, str] = field(default_factory=dict)  # id -> what the lengths were

    @property
    def samples(self) -> int:
        return len(self.batch)


class Decoder(Protocol):
    def decode(self, frames: Sequence[can.Message]) -> DecodedBatch: ...

    def decode_frames(self, frames: Frames) -> DecodedBatch: ...

    def names_of(self, frame_id: int, extended: bool) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Collision:
    """Two DBC files define the same frame id; the later one wins."""

    frame_id: int
    extended: bool
    kept: str  # "<file>:<message>"
    replaced: str

    def __str__(self) -> str:
        return f"frame id 0x{self.frame_id:X}: {self.kept} replaces {self.replaced}"


@dataclass(frozen=True)
class _Entry:
    message: Any  # cantools.database.can.Message
    source: str
    names: dict[str, str]  # cantools signal name -> "<Message>.<Signal>"
    plan: MessagePlan | None  # None: decoded by cantools frame by frame
    fallback: str = ""  # why there is no plan


# DBC files parsed in this process, by path and content: the local runtime hosts the four
# components, the report and the rule check in one process, each reading the same DBC (cantools
# takes 40-60 ms a file). A file changed on disk is parsed again. Nobody changes a loaded database.
_LOADED: OrderedDict[tuple[str, str], Any] = OrderedDict()
_LOADED_MAX = 16
_LOADED_LOCK = threading.Lock()


def load_dbc(path: str | Path) -> Any:
    """Load one DBC, or raise DbcError naming the file and the problem. A file already loaded
    in this process, unchanged since, is not parsed again (the same database object: read only)."""
    path = Path(path)
    if not path.is_file():
        raise DbcError(f"{path}: DBC file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DbcError(f"{path}: cannot read the DBC file: {exc.strerror or exc}") from None
    key = (str(path.resolve()), hashlib.sha256(data).hexdigest())
    with _LOADED_LOCK:
        db = _LOADED.get(key)
    if db is None:
        db = _parse_dbc(path, data)  # the bytes hashed, not a second read a deploy could change
        with _LOADED_LOCK:
            _LOADED[key] = db
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
    return db


def forget_loaded_dbcs() -> None:
    """Parse every DBC afresh from now on (a benchmark timing a replay from a cold start)."""
    with _LOADED_LOCK:
        _LOADED.clear()


def _parse_dbc(path: Path, data: bytes) -> Any:
    # as cantools.database.load_file reads a DBC: cp1252, undecodable bytes replaced, newlines universal
    text = io.TextIOWrapper(io.BytesIO(data), encoding="cp1252", errors="replace").read()
    try:
        db = cantools.database.load_string(text, database_format="dbc", strict=False)
    except Exception as exc:  # cantools raises ParseError, UnsupportedDatabaseFormatError, ...
        reason = " ".join(str(exc).split())
        raise DbcError(f"{path}: not a valid DBC file: {reason}") from exc
    if not isinstance(db, cantools.database.can.Database) or not db.messages:
        raise DbcError(f"{path}: DBC file defines no messages")
    _check_every_signal_loaded(path, text, db)
    return db


_BO = re.compile(r"^BO_\s+(\d+)\s+(\w+)\s*:")
_SG = re.compile(r"^\s+SG_\s+(\w+)")
_LONG_SIGNAL = re.compile(r'^BA_\s+"SystemSignalLongSymbol"\s+SG_\s+(\d+)\s+(\w+)\s+"([^"]*)"')
# Vector CANdb++ keeps signals that belong to no message in this pseudo-message; cantools skips it.
INDEPENDENT = "VECTOR__INDEPENDENT_SIG_MSG"


def _check_every_signal_loaded(path: Path, text: str, db: Any) -> None:
    """cantools skips a signal line it cannot parse (a DBC cut short, a typo) without a word;
    a signal that silently never decodes is worse than a refused file. What cantools leaves out
    by design is not refused: the signals of Vector's ``VECTOR__INDEPENDENT_SIG_MSG``, and a
    short name its ``SystemSignalLongSymbol`` attribute replaces with the long one. The same
    signal name twice in one message is refused: only one of them could ever decode."""
    loaded = {m.frame_id | (0x80000000 if m.is_extended_frame else 0): {s.name for s in m.signals} for m in db.messages}
    lines = text.splitlines()
    for line in lines:  # long names: the SG_ line has the short one
        if long := _LONG_SIGNAL.match(line):
            names = loaded.get(int(long.group(1)))
            if names is not None and long.group(3) in names:
                names.add(long.group(2))
    current: set[str] | None = None
    message = ""
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if bo := _BO.match(line):
            message = bo.group(2)
            current = None if message == INDEPENDENT else loaded.get(int(bo.group(1)), set())
            seen = {}
        elif (sg := _SG.match(line)) and current is not None:
            if sg.group(1) not in current:
                raise DbcError(f"{path}: not a valid DBC file: line {number}: signal not understood: {line.strip()[:80]}")
            if sg.group(1) in seen:
                raise DbcError(f"{path}: line {number}: message {message} defines signal {sg.group(1)} twice "
                               f"(first on line {seen[sg.group(1)]}): only one of them could be decoded")
            seen[sg.group(1)] = number
        elif line.strip() and not line[0].isspace():
            current = None


def is_j1939(db: Any, message: Any) -> bool:
    """A message of a J1939 network: ``VFrameFormat`` J1939PG, or the database's
    ``ProtocolType`` "J1939" (for an extended frame)."""
    if getattr(message, "protocol", None) == "j1939":
        return True
    attributes = getattr(getattr(db, "dbc", None), "attributes", None) or {}
    protocol = attributes.get("ProtocolType")
    return bool(message.is_extended_frame) and protocol is not None and str(protocol.value).upper() == "J1939"


def pgn_of(frame_id: int) -> int:
    """A J1939 frame's parameter group number: bits 8-25 of its id, less the destination address
    of a PDU1 frame (PDU format below 240)."""
    pgn = (frame_id >> 8) & 0x3FFFF
    return pgn & 0x3FF00 if (pgn >> 8) & 0xFF < 240 else pgn


def signal_names(message: Any, prefix: str | None = None) -> dict[str, str]:
    """A DBC message's signals by cantools name -> the name they travel under: ``<Message>.<Signal>``
    (``prefix`` instead of the message's name: a renamed message, a J1939 source address)."""
    prefix = message.name if prefix is None else prefix
    return {s.name: f"{prefix}.{s.name}" for s in message.signals}


def _entry(message: Any, source: str, prefix: str | None = None) -> _Entry:
    names = signal_names(message, prefix)
    try:
        return _Entry(message, source, names, MessagePlan.compile(message, names))
    except Unsupported as exc:
        return _Entry(message, source, names, None, str(exc))


class DbcDecoder:
    """Decodes frames with one or more DBC files; with two that define the same frame id, the
    one given later wins and the collision is reported once, at load.

    Two messages of the same name (in one DBC or across DBCs) would feed one column from two
    different signals: each of them is renamed ``<Message>@0x<ID>`` and the renaming reported
    (``renamed``). A J1939 message (see ``is_j1939``) matches every frame of its PGN, whatever its
    priority and source address; its signals are named ``<Message>@sa<SA>.<Signal>``, the source
    address (two hex digits) being part of the name."""

    def __init__(self, dbc_paths: Sequence[str | Path]) -> None:
        if not dbc_paths:
            raise DbcError("no DBC file given")
        self.files = [str(p) for p in dbc_paths]
        self.collisions: list[Collision] = []
        self.renamed: list[str] = []
        self._index: dict[tuple[int, bool], _Entry] = {}
        self._pgns: dict[int, tuple[Any, str]] = {}  # J1939 PGN -> (message, source)
        self._by_sa: dict[int, _Entry] = {}  # (PGN << 8 | source address) -> its entry
        self._program = Program()  # every plan, numbered as its frames first come
        self._slots: dict[int, tuple[_Entry | None, int]] = {}  # frame key -> entry, root node
        loaded: list[tuple[Path, Any]] = [(Path(path), load_dbc(path)) for path in dbc_paths]
        names = Counter(m.name for _, db in loaded for m in db.messages)
        for path, db in loaded:
            for message in db.messages:
                source = f"{path.name}:{message.name}"
                if is_j1939(db, message):
                    self._pgns[pgn_of(message.frame_id)] = (message, source)
                    continue
                key = (message.frame_id, bool(message.is_extended_frame))
                prefix = message.name
                if names[message.name] > 1:
                    prefix = f"{message.name}@0x{message.frame_id:X}"
                    self.renamed.append(f"{source} (0x{message.frame_id:X}) is named {prefix}: "
                                        f"{names[message.name]} messages are named {message.name}")
                    LOG.warning("DBC message renamed: %s", self.renamed[-1])
                entry = _entry(message, source, prefix)
                previous = self._index.get(key)
                if previous is not None:
                    collision = Collision(key[0], key[1], entry.source, previous.source)
                    LOG.warning("DBC collision: %s", collision)
                    self.collisions.append(collision)
                self._index[key] = entry
        # message name -> why cantools decodes it frame by frame
        self.fallback_messages: dict[str, str] = {
            e.message.name: e.fallback for e in self._index.values() if e.plan is None
        }
        for name, reason in self.fallback_messages.items():
            LOG.info("%s is decoded frame by frame by cantools: %s", name, reason)

    def resolutions(self) -> dict[str, tuple[float, float] | None]:
        """Each signal's DBC (scale, offset) by the name it travels under (None: an IEEE float);
        a J1939 signal under ``<Message>@sa*.<Signal>`` (the source address varies)."""
        out: dict[str, tuple[float, float] | None] = {}
        for entry in self._index.values():
            for s in entry.message.signals:
                out[entry.names[s.name]] = None if s.is_float else (float(s.scale), float(s.offset))
        for message, _ in self._pgns.values():
            for s in message.signals:
                out[f"{message.name}@sa*.{s.name}"] = None if s.is_float else (float(s.scale), float(s.offset))
        return out

    def matches(self, pattern: str) -> bool:
        """Whether an fnmatch pattern matches the name of any signal this decoder can produce."""
        if any(fnmatch.fnmatchcase(name, pattern) for e in self._index.values() for name in e.names.values()):
            return True
        addresses = range(256) if "@" in pattern else (0,)
        return any(fnmatch.fnmatchcase(f"{message.name}@sa{sa:02X}.{signal.name}", pattern)
                   for message, _ in self._pgns.values() for signal in message.signals for sa in addresses)

    def names_of(self, frame_id: int, extended: bool) -> tuple[str, ...]:
        """The names of the signals frames of this id can carry (every multiplexer branch's);
        none for an id the DBCs do not define."""
        entry = self._index.get((frame_id, extended))
        if entry is None and extended and self._pgns:
            entry = self._j1939(frame_id)
        return tuple(entry.names.values()) if entry is not None else ()

    def plan_of(self, frame_id: int, extended: bool) -> MessagePlan | None:
        """The compiled plan of this id's message (its signals named as ``names_of`` names
        them); None for a message cantools decodes frame by frame, or an id the DBCs do not define."""
        entry = self._index.get((frame_id, extended))
        if entry is None and extended and self._pgns:
            entry = self._j1939(frame_id)
        return entry.plan if entry is not None else None

    def decode(self, frames: Sequence[can.Message]) -> DecodedBatch:
        """python-can's frames, converted to columns once and decoded by ``decode_frames``."""
        return self.decode_frames(Frames.from_messages(frames))

    def decode_frames(self, frames: Frames) -> DecodedBatch:
        """The whole batch at once: its frames grouped by id, every frame of a planned message
        decoded by the decoder's ``Program`` (every plan as one set of tables), a fallback
        message's frames by cantools frame by frame; the result is the one ``decode_each`` gives."""
        n = len(frames)
        counts: Counter[str] = Counter(read=n)
        error = frames.error
        remote = frames.remote & ~error
        rows = np.flatnonzero(~(error | frames.remote))
        keys = frames.keys(rows)
        found, first, group = groups(keys)
        slots = [self._slot(key) for key in found.tolist()]
        known = np.array([entry is not None for entry, _ in slots], bool)
        roots = np.array([root for _, root in slots], np.int64)
        need = np.array([entry.message.length if entry is not None else 0 for entry, _ in slots], np.int64)
        frame_ids = found & 0xFFFFFFFF
        in_order = np.argsort(first, kind="stable")  # ids as they first appear
        events: dict[str, np.ndarray] = {}
        unknown: dict[int, list[int]] = {}  # id -> [first frame, frames]
        if not known.all():
            per_id = np.bincount(group, minlength=len(found))
            for i in in_order[~known[in_order]].tolist():
                unknown.setdefault(int(frame_ids[i]), [int(rows[first[i]]), 0])[1] += int(per_id[i])
            events["unknown_id"] = rows[~known[group]]
        lengths = frames.length[rows].astype(np.int64)
        mismatch: Counter[int] = Counter()
        reasons: dict[int, str] = {}
        odd = known[group] & (lengths != need[group])
        if odd.any():
            odd_per_id = np.bincount(group[odd], minlength=len(found))
            for i in in_order[odd_per_id[in_order] > 0].tolist():
                entry = slots[i][0]
                assert entry is not None
                frame_id = int(frame_ids[i])
                mismatch[frame_id] += int(odd_per_id[i])  # an id both standard and extended: both
                if frame_id not in reasons:
                    seen = ", ".join(str(v) for v in distinct(lengths[odd & (group == i)]).tolist())
                    reasons[frame_id] = f"{entry.message.name}: {seen} data bytes, the DBC says {entry.message.length}"
        failed = np.zeros(n, bool)
        frame_roots = roots[group]
        planned = frame_roots >= 0
        short = planned & (lengths < need[group])  # cantools refuses a short payload
        failed[rows[short]] = True
        go = planned & ~short
        cells = self._program.run(frames.data, rows[go], frame_roots[go], failed)
        fallback = 0
        if (by_cantools := known & (roots < 0)).any():
            parts = [cells]
            for i in in_order[by_cantools[in_order]].tolist():
                entry = slots[i][0]
                assert entry is not None
                at = rows[group == i]
                fallback += len(at)
                ok, decoded = self._decode_rows(entry, frames, at)
                failed[at[~ok]] = True
                for block in decoded:
                    size = len(block.rows)
                    parts.append(Cells(at[block.rows], np.full(size, self._program.name_number(block.names[0]), np.int64),
                                       np.full(size, block.ranks[0], np.int64), block.values[:, 0]))
            cells = Cells(*(np.concatenate([getattr(c, f) for c in parts]) for f in ("rows", "names", "ranks", "values")))
        failed_here = failed[rows]
        if decoded_here := int(known[group].sum()) - int(failed_here.sum()):
            counts["decoded"] = decoded_here
        for name, flags in (("error", error), ("remote", remote)):
            if c := int(flags.sum()):
                counts[name] = c
                events[name] = np.flatnonzero(flags)
        if unknown:
            counts["unknown_id"] = sum(c for _, c in unknown.values())
        failed_ids: dict[int, list[int]] = {}  # id -> [first failed frame, frames]
        if failed_here.any():
            bad_group, bad_rows = group[failed_here], rows[failed_here]
            per_id = np.bincount(bad_group, minlength=len(found))
            first_bad = np.full(len(found), n, np.int64)
            np.minimum.at(first_bad, bad_group, bad_rows)
            for i in np.flatnonzero(per_id).tolist():
                record = failed_ids.setdefault(int(frame_ids[i]), [int(first_bad[i]), 0])
                record[0] = min(record[0], int(first_bad[i]))
                record[1] += int(per_id[i])
                LOG.debug("cannot decode 0x%X: %d frames", int(frame_ids[i]), int(per_id[i]))
            counts["decode_error"] = int(failed_here.sum())
            events["decode_error"] = bad_rows
        batch, non_finite = _flatten(cells, frames.t, self._program.names)
        events = {name: events[name] for name in ("error", "remote", "unknown_id", "decode_error") if name in events}
        return DecodedBatch(batch, counts, _in_order(unknown), _in_order(failed_ids), sum(non_finite.values()),
                            fallback, events, non_finite, mismatch, reasons)

    def _slot(self, key: int) -> tuple[_Entry | None, int]:
        """The entry of a frame key (id | extended << 32) and its plan's root node in the
        program (-1: cantools decodes it frame by frame); (None, -1) for an id no DBC knows.
        Only known ids are remembered: a bus (or a log) of random ids must not grow the reader."""
        slot = self._slots.get(key)
        if slot is None:
            frame_id = key & 0xFFFFFFFF
            entry = self._index.get((frame_id, bool(key >> 32)))
            if entry is None and key >> 32 and self._pgns:
                entry = self._j1939(frame_id)
            if entry is None:
                return None, -1
            root = self._program.add(entry.plan) if entry.plan is not None else -1
            slot = self._slots[key] = (entry, root)
        return slot

    def _j1939(self, frame_id: int) -> _Entry | None:
        """The entry of a J1939 frame, by its PGN; one per (PGN, source address), named by both."""
        pgn = pgn_of(frame_id)
        found = self._pgns.get(pgn)
        if found is None:
            return None
        sa = frame_id & 0xFF
        entry = self._by_sa.get(pgn << 8 | sa)
        if entry is None:
            message, source = found
            entry = self._by_sa[pgn << 8 | sa] = _entry(message, source, f"{message.name}@sa{sa:02X}")
        return entry

    @staticmethod
    def _decode_rows(entry: _Entry, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, list[Block]]:
        """cantools, frame by frame, for the frames at ``rows`` of one message: as a plan answers,
        one block per signal."""
        ok = np.zeros(len(rows), bool)
        # signal -> [its place in the frame of its first finite value, rows, values]
        found: dict[str, list[Any]] = {}
        lengths = frames.length[rows].tolist()
        for i, row in enumerate(rows.tolist()):
            try:
                decoded = entry.message.decode(frames.data[row, :lengths[i]].tobytes(), decode_choices=False)
            except Exception:  # cantools.DecodeError, or struct errors on odd lengths
                continue
            ok[i] = True
            for rank, (signal, value) in enumerate(decoded.items()):
                column = found.setdefault(signal, [None, [], []])
                value = float(value)
                if column[0] is None and abs(value) <= MAX_MAGNITUDE:
                    column[0] = rank
                column[1].append(i)
                column[2].append(value)
        return ok, [Block((entry.names[signal],), (rank or 0,), np.array(at, np.int64), np.array(values)[:, None])
                    for signal, (rank, at, values) in found.items()]

    def decode_each(self, frames: Frames) -> DecodedBatch:
        """cantools frame by frame over the whole batch: the reference for ``decode_frames``."""
        # One pass over the frames into three flat lists (name number, time, value); one stable
        # sort by name number then makes each signal's samples contiguous, in time order.
        numbers: dict[str, int] = {}
        ids: list[int] = []
        times: list[float] = []
        values: list[float] = []
        counts: Counter[str] = Counter(read=len(frames))
        unknown: Counter[int] = Counter()
        failed: Counter[int] = Counter()
        non_finite: Counter[str] = Counter()
        mismatch: Counter[int] = Counter()
        handed = 0
        index = self._index
        columns = zip(frames.t.tolist(), frames.id.tolist(), frames.extended.tolist(), frames.error.tolist(),
                      frames.remote.tolist(), frames.length.tolist(), frames.data)
        for ts, frame_id, extended, is_error, is_remote, length, data in columns:
            if is_error:
                counts["error"] += 1
                continue
            if is_remote:
                counts["remote"] += 1
                continue
            entry = index.get((frame_id, extended))
            if entry is None and extended and self._pgns:
                entry = self._j1939(frame_id)
            if entry is None:
                counts["unknown_id"] += 1
                unknown[frame_id] += 1
                continue
            handed += 1
            if length != entry.message.length:
                mismatch[frame_id] += 1
            try:
                decoded = entry.message.decode(data[:length].tobytes(), decode_choices=False)
            except Exception as exc:  # cantools.DecodeError, or struct errors on odd lengths
                counts["decode_error"] += 1
                if not failed[frame_id]:
                    LOG.debug("cannot decode 0x%X: %s", frame_id, exc)
                failed[frame_id] += 1
                continue
            counts["decoded"] += 1
            for signal, value in decoded.items():
                value = float(value)
                name = entry.names[signal]
                if not abs(value) <= MAX_MAGNITUDE:
                    non_finite[name] += 1
                    continue
                number = numbers.get(name)
                if number is None:
                    number = numbers[name] = len(numbers)
                ids.append(number)
                times.append(ts)
                values.append(value)
        id_array = np.array(ids, dtype=np.int64)
        order = np.argsort(id_array, kind="stable")
        batch = FlatBatch(tuple(numbers), id_array[order], np.array(times, dtype=np.float64)[order],
                          np.array(values, dtype=np.float64)[order])
        return DecodedBatch(batch, counts, unknown, failed, sum(non_finite.values()), handed,
                            non_finite_signals=non_finite, length_mismatch=mismatch)


def _in_order(counts: dict[int, list[int]]) -> Counter[int]:
    """Counts per id, in the order their first frame came (as counting frame by frame does)."""
    return Counter({key: n for key, (_, n) in sorted(counts.items(), key=lambda item: item[1][0])})


def _by_name_then_row(ids: np.ndarray, rows: np.ndarray, names: int) -> np.ndarray:
    """The stable order of the cells by (``ids``, ``rows``): ``np.argsort(ids * (rows.max() + 1)
    + rows, kind="stable")``. Cells come in row order for most names, so they are sorted by name
    alone first (numpy's stable sort of 16-bit integers is a radix sort, ten times quicker than
    the merge sort of 64-bit keys) and the keys checked: if they are in order there, that is the
    same permutation (ties keep the cells' order either way); if not, the full sort."""
    key = ids * (int(rows.max()) + 1) + rows
    if names <= np.iinfo(np.int16).max:
        order = np.argsort(ids.astype(np.int16), kind="stable")
        ordered = key[order]
        if len(ordered) < 2 or bool((ordered[1:] >= ordered[:-1]).all()):
            return order
    return np.argsort(key, kind="stable")


def _flatten(cells: Cells, times: np.ndarray, names: Sequence[str]) -> tuple[FlatBatch, Counter[str]]:
    """The cells as one FlatBatch, as decoding frame by frame builds it: a name is numbered
    when its first finite value comes (batch order, then the signal's place in its frame), and
    each name's samples are contiguous, in batch order. Values that are not finite or beyond
    ``MAX_MAGNITUDE`` are counted (per name, names in the order such values come), left out."""
    non_finite: Counter[str] = Counter()
    rows, numbers, ranks, values = cells.rows, cells.names, cells.ranks, cells.values
    with np.errstate(invalid="ignore"):
        finite = np.abs(values) <= MAX_MAGNITUDE  # NaN: False
    if not finite.all():
        dropped = ~finite
        in_order = numbers[dropped][np.lexsort((ranks[dropped], rows[dropped]))]
        seen, at, tally = np.unique(in_order, return_index=True, return_counts=True)
        for i in np.argsort(at, kind="stable").tolist():
            non_finite[names[int(seen[i])]] = int(tally[i])
        rows, numbers, ranks, values = rows[finite], numbers[finite], ranks[finite], values[finite]
    if not len(rows):
        return FlatBatch.empty(), non_finite
    # a name's place: that of its first value, the least (row, rank) of its cells
    none = np.iinfo(np.int64).max
    first = np.full(len(names), none, np.int64)
    np.minimum.at(first, numbers, rows * (int(ranks.max()) + 1) + ranks)
    present = np.flatnonzero(first < none)
    named = present[np.argsort(first[present], kind="stable")]
    place = np.empty(len(names), np.int64)
    place[named] = np.arange(len(named))
    ids = place[numbers]
    order = _by_name_then_row(ids, rows, len(named))
    return FlatBatch(tuple(names[i] for i in named.tolist()), ids[order], times[rows[order]], values[order]), non_finite
