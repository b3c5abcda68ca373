"""Decoding CAN frames into signal columns with the vehicle's DBC files (cantools).

Load once, index once: the DBCs are loaded and their frames indexed by (id, extended) when the
decoder is built; decoding a batch is then one dictionary look-up and one cantools call per frame.
Values are cantools' scaled numbers (``decode_choices=False``). Signals are named
``<Message>.<Signal>``. Error frames, remote frames, ids no DBC knows and frames that fail to
decode are counted, never fatal.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import can
import cantools
import numpy as np

from .errors import DbcError
from .messages import FlatBatch

LOG = logging.getLogger(__name__)


@dataclass
class DecodedBatch:
    """The decoded samples of a batch, flat (see ``FlatBatch``), plus what happened to each frame."""

    batch: FlatBatch
    frames: Counter[str]
    unknown_ids: Counter[int] = field(default_factory=Counter)
    decode_errors: Counter[int] = field(default_factory=Counter)
    non_finite: int = 0

    @property
    def samples(self) -> int:
        return len(self.batch)


class Decoder(Protocol):
    def decode(self, frames: Sequence[can.Message]) -> DecodedBatch: ...


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


def load_dbc(path: str | Path) -> Any:
    """Load one DBC, or raise DbcError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise DbcError(f"{path}: DBC file not found")
    try:
        db = cantools.database.load_file(str(path), database_format="dbc", strict=False)
    except Exception as exc:  # cantools raises ParseError, UnsupportedDatabaseFormatError, ...
        reason = " ".join(str(exc).split())
        raise DbcError(f"{path}: not a valid DBC file: {reason}") from exc
    if not isinstance(db, cantools.database.can.Database) or not db.messages:
        raise DbcError(f"{path}: DBC file defines no messages")
    _check_every_signal_loaded(path, db)
    return db


_BO = re.compile(r"^BO_\s+(\d+)\s+(\w+)\s*:")
_SG = re.compile(r"^\s+SG_\s+(\w+)")


def _check_every_signal_loaded(path: Path, db: Any) -> None:
    """cantools skips a signal line it cannot parse (a DBC cut short, a typo) without a word;
    a signal that silently never decodes is worse than a refused file."""
    loaded = {m.frame_id | (0x80000000 if m.is_extended_frame else 0): {s.name for s in m.signals} for m in db.messages}
    current: set[str] | None = None
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if bo := _BO.match(line):
            current = loaded.get(int(bo.group(1)), set())
        elif (sg := _SG.match(line)) and current is not None and sg.group(1) not in current:
            raise DbcError(f"{path}: not a valid DBC file: line {number}: signal not understood: {line.strip()[:80]}")
        elif line.strip() and not line[0].isspace():
            current = None


class DbcDecoder:
    """Decodes frames with one or more DBC files; with two that define the same frame id, the
    one given later wins and the collision is reported once, at load."""

    def __init__(self, dbc_paths: Sequence[str | Path]) -> None:
        if not dbc_paths:
            raise DbcError("no DBC file given")
        self.files = [str(p) for p in dbc_paths]
        self.collisions: list[Collision] = []
        self._index: dict[tuple[int, bool], _Entry] = {}
        for path in dbc_paths:
            db = load_dbc(path)
            for message in db.messages:
                key = (message.frame_id, bool(message.is_extended_frame))
                entry = _Entry(
                    message,
                    f"{Path(path).name}:{message.name}",
                    {s.name: f"{message.name}.{s.name}" for s in message.signals},
                )
                previous = self._index.get(key)
                if previous is not None:
                    collision = Collision(key[0], key[1], entry.source, previous.source)
                    LOG.warning("DBC collision: %s", collision)
                    self.collisions.append(collision)
                self._index[key] = entry

    def decode(self, frames: Sequence[can.Message]) -> DecodedBatch:
        # One pass over the frames into three flat lists (name number, time, value); one stable
        # sort by name number then makes each signal's samples contiguous, in time order.
        numbers: dict[str, int] = {}
        ids: list[int] = []
        times: list[float] = []
        values: list[float] = []
        counts: Counter[str] = Counter(read=len(frames))
        unknown: Counter[int] = Counter()
        failed: Counter[int] = Counter()
        non_finite = 0
        index = self._index
        for frame in frames:
            if frame.is_error_frame:
                counts["error"] += 1
                continue
            if frame.is_remote_frame:
                counts["remote"] += 1
                continue
            entry = index.get((frame.arbitration_id, frame.is_extended_id))
            if entry is None:
                counts["unknown_id"] += 1
                unknown[frame.arbitration_id] += 1
                continue
            try:
                decoded = entry.message.decode(frame.data, decode_choices=False)
            except Exception as exc:  # cantools.DecodeError, or struct errors on odd lengths
                counts["decode_error"] += 1
                if not failed[frame.arbitration_id]:
                    LOG.debug("cannot decode 0x%X: %s", frame.arbitration_id, exc)
                failed[frame.arbitration_id] += 1
                continue
            counts["decoded"] += 1
            ts = frame.timestamp
            for signal, value in decoded.items():
                value = float(value)
                if not math.isfinite(value):
                    non_finite += 1
                    continue
                name = entry.names[signal]
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
        return DecodedBatch(batch, counts, unknown, failed, non_finite)
