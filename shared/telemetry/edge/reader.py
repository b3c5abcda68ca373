"""The CAN reader: frames in, batches of decoded signal columns out.

A replay as fast as possible is cut instead by ``replay_batch_frames`` / ``replay_batch_seconds``
(``batch_ends``), never inside one event time; every batch carries the event times of its error,
remote, unknown-id and decode-error frames (``events``, for bus rules).

Frames are collected into a batch that is flushed when it holds ``batch_max_frames`` frames or
spans ``batch_max_seconds`` of event time (a live bus also flushes on wall-clock time, so a quiet
bus does not hold a batch back). Each batch is decoded at once and published as one ``signals``
message; the end of a replay is published as ``end_of_stream`` so downstream components can close
their windows. Event time is the frame's own timestamp.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import can
import numpy as np

from . import messages
from .arrays import distinct
from .decode import MAX_MAGNITUDE, Decoder
from .frames import Frames
from .messages import MAX_EVENT_TIME
from .plan import Program, only
from .rules import LimitRule, Rule
from .rules.base import per_table

LOG = logging.getLogger(__name__)


class FrameBatcher:
    """Decides when a batch is full, by count and by event-time span. A live reader admits the
    frames of its open batch as it goes (``take_pending``), every ``limit_check_seconds``, and
    publishes them all when the batch is full (``take``)."""

    def __init__(self, max_frames: int, max_seconds: float) -> None:
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.frames: list[can.Message] = []  # read, not yet admitted
        self.count = 0  # frames of the open batch, admitted or not
        self.first_time = 0.0  # event time of its first frame
        self.opened_at = 0.0  # wall-clock (monotonic) time the first frame arrived
        self.pending_since = 0.0  # ... and the first frame not yet admitted

    def add(self, frame: can.Message, now: float) -> bool:
        """Add a frame; True when the batch should be flushed now."""
        return self.extend([frame], now)[1]

    def extend(self, frames: Sequence[can.Message], now: float) -> tuple[int, bool]:
        """Add frames read at once (``now``), in order, up to the one that fills the batch: how
        many were taken, and whether the batch is full (flush it, then extend with the rest)."""
        if not frames:
            return 0, False
        if not self.count:
            self.opened_at, self.first_time = now, frames[0].timestamp
        if not self.frames:
            self.pending_since = now
        take = frames[:self.max_frames - self.count]
        times = [f.timestamp for f in take]
        first, span = self.first_time, self.max_seconds
        full = max(times) - first >= span
        if full:  # the frame that reaches the span closes the batch
            take = take[:next(i for i, t in enumerate(times) if t - first >= span) + 1]
        self.frames.extend(take)
        self.count += len(take)
        return len(take), full or self.count >= self.max_frames

    def take_pending(self) -> list[can.Message]:
        """The frames not yet admitted; the batch stays open."""
        frames, self.frames = self.frames, []
        return frames

    def take(self) -> list[can.Message]:
        """The frames not yet admitted; the batch is closed."""
        self.count = 0
        return self.take_pending()


def batch_ends(t: np.ndarray, max_frames: int, max_seconds: float) -> list[int]:
    """How a replay cuts a run of frames with event times ``t`` (in arrival order, not
    necessarily sorted) into batches: where ``FrameBatcher`` would flush (by count or by
    event-time span), moved past any frames of the same event time as the last one, so frames of
    one instant always travel together (rules judge an instant after all of its samples). The
    end index (exclusive) of each batch known to be complete: what follows the last end, up to
    and including a batch that reaches the end of ``t``, is still open (more frames of the same
    instant may follow in the next chunk)."""
    ends: list[int] = []
    start, n = 0, len(t)
    while start < n:
        window = t[start:start + max_frames]
        over = np.flatnonzero(window - window[0] >= max_seconds)
        # the frame that reaches the span closes its batch; else the count does, if reached
        end = start + (int(over[0]) + 1 if len(over) else max_frames)
        if end >= n:
            break
        same = np.flatnonzero(t[end:] != t[end - 1])  # the instant's other frames come along
        if not len(same):
            break
        end += int(same[0])
        ends.append(end)
        start = end
    return ends


class ClockGuard:
    """Keeps one bad timestamp from moving the stream's event time (docs/CONFIG.md, "Event time").

    The event clock is the latest admitted frame's time. A frame within ``skew`` seconds of it
    (either way) is admitted. A frame further away is held: if ``confirm`` frames in a row agree
    with it (within ``skew`` of each other) before a frame near the clock comes, the clock has
    jumped and they are admitted. A jump forward is a gap (a quiet bus; a clock set right). A
    jump back is a logger's clock reset: a new *epoch*, whose frames are shifted to start at the
    clock, so event time never runs backwards (no late samples, no alert storm); a later jump
    forward past the clock ends the shift. A held frame that is not confirmed is quarantined:
    counted, never decoded. The first frames of a stream are judged against the median of the
    first ``confirm`` of them, so a bad first timestamp does not set the clock either. A frame
    whose time is not finite, or is past ``MAX_EVENT_TIME`` (2255) either side of 1970, is always
    quarantined: however many agree, such times are no CAN frame's."""

    def __init__(self, skew: float = 5.0, confirm: int = 16) -> None:
        self.skew = float(skew)
        self.confirm = int(confirm)
        self.clock: float | None = None  # the latest admitted event time (shifted)
        self.offset = 0.0  # added to every frame's own time in this epoch
        self.held: Frames | None = None  # frames waiting for confirmation
        self.quarantined = 0
        self.gaps = 0
        self.epochs: list[dict[str, float]] = []  # each backward jump: at (event time), jump (s)

    def admit(self, frames: Frames) -> Frames:
        """The frames to decode, their times shifted into the current epoch."""
        if self.held is not None:
            frames, self.held = Frames.concat([self.held, frames]), None
        if not len(frames):
            return frames
        t = frames.t + self.offset if self.offset else frames.t
        if self.clock is None:
            self._start(frames.t)
        if self.clock is not None:
            before = np.maximum.accumulate(np.concatenate(([self.clock], t)))[:-1]
            if (np.abs(t - before) <= self.skew).all():  # the common case: one comparison a frame
                high = float(t.max())
                if high <= MAX_EVENT_TIME and float(t.min()) >= -MAX_EVENT_TIME:
                    self.clock = max(self.clock, high)
                    return frames if t is frames.t else dataclasses.replace(frames, t=t)
        return self._judge(frames)

    def _start(self, t: np.ndarray) -> None:
        """The start of the stream: the clock is the median of its first frames (none while none
        of them has a time that can be one)."""
        first = sorted(x for x in t[:self.confirm].tolist() if abs(x) <= MAX_EVENT_TIME)  # NaN: False
        if first:
            # their median, as np.median gives it (whose first call imports numpy.ma: 22 ms, memory)
            middle = len(first) // 2
            self.clock = float(first[middle] if len(first) % 2 else (first[middle - 1] + first[middle]) / 2)

    def _judge(self, frames: Frames) -> Frames:
        raw = frames.t.tolist()
        if self.clock is None:  # no first frame with a time that can be one
            self.quarantined += len(raw)
            return frames.take(np.zeros(len(raw), bool))
        clock, offset, skew = self.clock, self.offset, self.skew
        keep = np.zeros(len(raw), bool)
        shifted = np.zeros(len(raw))
        held: list[int] = []
        low = high = 0.0
        for i, x in enumerate(raw):
            s = x + offset
            if abs(s - clock) <= skew and abs(s) <= MAX_EVENT_TIME:
                keep[i], shifted[i] = True, s
                clock = max(clock, s)
                self.quarantined += len(held)
                held = []
                continue
            if not abs(x) <= MAX_EVENT_TIME:  # not finite, or past 2255: never confirmed
                self.quarantined += 1
                continue
            if held and max(high, x) - min(low, x) <= skew:
                held.append(i)
                low, high = min(low, x), max(high, x)
            else:
                self.quarantined += len(held)
                held, low, high = [i], x, x
            if len(held) >= self.confirm:
                if low + offset < clock:  # back in time: a new epoch, starting at the clock
                    self.epochs.append({"at": clock, "jump": clock - (low + offset)})
                    offset = clock - low
                else:  # forward: a gap; a clock back at (or past) the real time needs no shift
                    self.gaps += 1
                    if low >= clock:
                        offset = 0.0
                for j in held:
                    if abs(raw[j] + offset) <= MAX_EVENT_TIME:
                        keep[j], shifted[j] = True, raw[j] + offset
                    else:  # shifted past 2255: as a time there is
                        self.quarantined += 1
                clock = max(clock, float(shifted[held].max()))
                held = []
        self.clock, self.offset = clock, offset
        if held:
            self.held = frames.take(np.array(held))
        admitted = frames.take(keep)
        return dataclasses.replace(admitted, t=shifted[keep])

    def finish(self) -> None:
        """The end of the stream: frames still held were never confirmed."""
        if self.held is not None:
            self.quarantined += len(self.held)
            self.held = None


class LimitCheck:
    """Whether freshly decoded samples take a signal across a ``limit`` rule, so that a live
    reader, which publishes long batches (cheap for every component), publishes at once then and
    the alert does not wait for the batch to fill. Only a hint: the detector judges every sample
    as always. A batch is cut short when a (rule, signal) starts being across its limit, not
    again while it stays there (a signal parked beyond a limit must not cut every batch short).

    The reader checks the frames it has just admitted (``check``): only those whose id can carry
    a signal of a limit rule, and of them only the watched signals (and the multiplexers that
    choose them) are decoded, by a small ``Program`` of plans cut down to them (``plan.only``),
    built once per decoder as ids first come; the open batch is decoded once, when it is
    published. Every (rule, signal) pair is one row of a table (the rule's bounds, and whether
    the pair's last checked sample was across), so a check is a fixed number of numpy calls.
    A ``LimitCheck`` is made anew when a deployment changes the rules."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.evaluators = [r.evaluator() for r in rules if isinstance(r, LimitRule)]
        self.crossings = 0
        # (rule, signal) pairs, those of one signal together, numbered as the signal first comes
        self._slots: dict[str, int] = {}  # signal name -> its slot
        self._first = np.zeros(0, np.int64)  # slot -> its first pair
        self._count = np.zeros(0, np.int64)  # slot -> its pairs (the limit rules watching it)
        self._lo = np.zeros(0)  # pair -> its rule's minimum (-inf: none)
        self._hi = np.zeros(0)  # ... maximum (inf: none)
        self._across = np.zeros(0, bool)  # pair -> its last checked sample was across
        self._pair_slot = np.zeros(0, np.int64)  # pair -> its signal's slot
        # per slot, the band inside every one of its rules' limits (a sample outside it is across
        # some rule: v < the greatest minimum or v > the least maximum), and whether a pair is across
        self._band_lo = np.zeros(0)
        self._band_hi = np.zeros(0)
        self._hot = np.zeros(0, bool)
        self._tables: dict[tuple[str, ...], np.ndarray] = {}  # a batch's name table -> slots
        self._decoding: _WatchedDecode | None = None

    def check(self, frames: Frames, decoder: Decoder) -> bool:
        """Whether frames just admitted start a crossing: the answer of
        ``crossed(decoder.decode_frames(frames).batch)``, with only the frames that can carry a
        watched signal decoded, and of them only the watched signals (a decoder without plans,
        ``plan_of``, decodes those frames whole)."""
        if not self.evaluators or not len(frames):
            return False
        decoding = self._decoding
        if decoding is None or decoding.decoder is not decoder:
            decoding = self._decoding = _WatchedDecode(decoder, self)
        return self._judge(*decoding.samples(frames))

    def crossed(self, batch: messages.FlatBatch) -> bool:
        """True when a sample of ``batch`` (a decoded batch: each signal's samples contiguous, in
        order) starts a crossing: it is across its rule's limit, and the signal's sample before
        it (in this batch, or the last one checked) was not."""
        if not len(batch):
            return False
        slots = per_table(self._tables, batch.names, lambda: np.array([self.slot(n) for n in batch.names], np.int64))
        return self._judge(slots[batch.ids], np.arange(len(batch)), batch.v)

    def slot(self, name: str) -> int:
        """A signal's slot in the table of pairs; its pairs (one per limit rule that watches it,
        none for a signal no limit rule watches) are added when it first comes."""
        slot = self._slots.get(name)
        if slot is None:
            rules = [e.rule for e in self.evaluators if e.matches(name)]
            slot = self._slots[name] = len(self._slots)
            self._first = np.append(self._first, len(self._lo))
            self._count = np.append(self._count, len(rules))
            self._lo = np.append(self._lo, [-math.inf if r.min is None else r.min for r in rules])
            self._hi = np.append(self._hi, [math.inf if r.max is None else r.max for r in rules])
            self._across = np.append(self._across, np.zeros(len(rules), bool))
            self._pair_slot = np.append(self._pair_slot, np.full(len(rules), slot, np.int64))
            self._band_lo = np.append(self._band_lo, max((r.min for r in rules if r.min is not None), default=-math.inf))
            self._band_hi = np.append(self._band_hi, min((r.max for r in rules if r.max is not None), default=math.inf))
            self._hot = np.append(self._hot, False)
        return slot

    def watches(self, name: str) -> bool:
        """Whether some limit rule watches this signal."""
        slot = self.slot(name)  # first: it may grow the table
        return bool(self._count[slot])

    def _judge(self, slots: np.ndarray, position: np.ndarray, v: np.ndarray) -> bool:
        """Samples (each signal's slot, its place among that signal's samples, its value): one
        per (sample, pair of its signal), put in order by pair then place; a sample starts a
        crossing when it is across and the one before it (or the pair's state) was not."""
        # the common case: no sample across any rule, and no signal of the check across before
        # (nothing starts, nothing changes): two comparisons a sample, no sort
        if not ((v < self._band_lo[slots]) | (v > self._band_hi[slots])).any() and not self._hot[slots].any():
            return False
        count = self._count[slots]
        if not count.any():
            return False
        if (count == 1).all():
            pair = self._first[slots]
        else:
            ends = np.cumsum(count)
            total = int(ends[-1])
            pair = np.repeat(self._first[slots] - ends + count, count) + np.arange(total)
            v, position = np.repeat(v, count), np.repeat(position, count)
        order = np.argsort(pair * (int(position.max()) + 1) + position, kind="stable")
        pair, v = pair[order], v[order]
        over = (v < self._lo[pair]) | (v > self._hi[pair])  # NaN: never across
        first = np.ones(len(pair), bool)
        first[1:] = pair[1:] != pair[:-1]
        before = np.empty(len(pair), bool)
        before[1:] = over[:-1]
        before[first] = self._across[pair[first]]
        last = np.ones(len(pair), bool)
        last[:-1] = first[1:]
        self._across[pair[last]] = over[last]  # each pair's latest sample: where it is now
        self._hot[:] = False
        self._hot[self._pair_slot[self._across]] = True
        if (over & ~before).any():
            self.crossings += 1
            return True
        return False


class _WatchedDecode:
    """A decoder's frames as a ``LimitCheck`` decodes them: per frame key (id | extended << 32),
    whether it carries a watched signal and how it is decoded (the message's plan cut down to
    the watched signals, in one ``Program``; or, for a message cantools decodes frame by frame,
    the decoder itself), as sorted arrays looked up by one ``searchsorted`` a check."""

    NOTHING, PLANNED, WHOLE = 0, 1, 2
    MOST_KEYS = 4096  # ids that carry no watched signal (unknown ones too) are forgotten past this

    def __init__(self, decoder: Decoder, check: LimitCheck) -> None:
        self.decoder = decoder
        self.check = check
        self.program = Program()
        self.slot_of = np.zeros(0, np.int64)  # the program's signal number -> the check's slot
        self.known: dict[int, tuple[int, int, int]] = {}  # key -> (how, root node, bytes needed)
        self.keys = np.zeros(0, np.int64)  # sorted
        self.how = self.root = self.need = np.zeros(0, np.int64)

    def samples(self, frames: Frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The watched signals' samples of ``frames`` as ``decode_frames`` gives them (what fails
        to decode gives none; values not finite or beyond ``MAX_MAGNITUDE`` left out): each
        signal's slot, the frame's row, the value."""
        keys = frames.keys()
        keys[frames.error | frames.remote] = -1
        at = self._lookup(keys)
        how = self.how[at]
        parts = []
        if len(planned := np.flatnonzero(how == self.PLANNED)):
            ok = frames.length[planned] >= self.need[at[planned]]  # cantools refuses a short payload
            rows = planned[ok]
            cells = self.program.run(frames.data, rows, self.root[at[rows]], np.zeros(len(frames), bool))
            with np.errstate(invalid="ignore"):
                keep = np.abs(cells.values) <= MAX_MAGNITUDE  # NaN: False
            parts.append((self.slot_of[cells.names[keep]], cells.rows[keep], cells.values[keep]))
        if len(whole := np.flatnonzero(how == self.WHOLE)):
            # the frames' rows as their times: each sample says which frame it came from
            batch = self.decoder.decode_frames(dataclasses.replace(frames.take(whole), t=whole.astype(np.float64))).batch
            slots = np.array([self.check.slot(n) for n in batch.names], np.int64)
            parts.append((slots[batch.ids], batch.t.astype(np.int64), batch.v))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each key's place in the tables, learning the keys not seen yet."""
        for _ in range(2):
            at = np.searchsorted(self.keys, keys)
            np.minimum(at, len(self.keys) - 1, out=at)
            if len(self.keys) and (self.keys[at] == keys).all():
                return at
            self._learn(distinct(keys).tolist())
        raise AssertionError("every key was learnt")

    def _learn(self, keys: list[int]) -> None:
        known = self.known
        if len(known) + len(keys) > self.MOST_KEYS:  # a bus of random ids must not grow the reader
            self.known = known = {key: found for key, found in known.items() if found[0] != self.NOTHING}
        plan_of = getattr(self.decoder, "plan_of", None)
        for key in keys:
            if key in known:
                continue
            frame_id, extended = key & 0xFFFFFFFF, bool(key >> 32)
            names = self.decoder.names_of(frame_id, extended) if key >= 0 else ()
            watched = frozenset(n for n in names if self.check.watches(n))
            plan = plan_of(frame_id, extended) if watched and plan_of is not None else None
            if not watched:
                known[key] = (self.NOTHING, -1, 0)
            elif plan is None:
                known[key] = (self.WHOLE, -1, 0)
            else:
                known[key] = (self.PLANNED, self.program.add(only(plan, watched)), plan.length)
        if len(self.slot_of) < len(self.program.names):
            self.slot_of = np.array([self.check.slot(n) for n in self.program.names], np.int64)
        order = sorted(known)
        self.keys = np.array(order, np.int64)
        found = np.array([known[key] for key in order], np.int64).reshape(-1, 3)
        self.how, self.root, self.need = found[:, 0], found[:, 1], found[:, 2]


class ReaderCore:
    """Pure core of the reader: decode a batch of frames, keep totals, build the messages."""

    def __init__(self, decoder: Decoder, source_name: str, guard: ClockGuard | None = None) -> None:
        self.decoder = decoder
        self.source_name = source_name
        self.guard = guard if guard is not None else ClockGuard()
        self.totals: Counter[str] = Counter()
        self.unknown_ids: Counter[int] = Counter()
        self.decode_error_ids: Counter[int] = Counter()
        self.dropped_values: Counter[str] = Counter()  # signal -> values left out (NaN, inf, beyond 1e100)
        self.length_mismatch: Counter[int] = Counter()  # id -> frames whose length is not the DBC's
        self.length_reasons: dict[int, str] = {}
        self.seq = 0
        self.first_time: float | None = None
        self.last_time: float | None = None

    def admit(self, frames: Frames | list[can.Message]) -> Frames:
        """Frames (columns, or python-can's frames from a live bus) as columns, less those whose
        timestamps the clock guard does not admit (counted), and counted as read. A live reader
        admits its open batch as it fills, and decodes it once (``message_of``)."""
        if not isinstance(frames, Frames):
            frames = Frames.from_messages(frames)
        admitted = self.guard.admit(frames)
        self.totals["read"] += len(admitted)
        return admitted

    def batch_message(self, frames: Frames | list[can.Message]) -> messages.Signals:
        """A batch of frames admitted, decoded and counted into one ``signals`` message."""
        return self.message_of(self.admit(frames))

    def message_of(self, frames: Frames) -> messages.Signals:
        """The ``signals`` message of admitted frames (``admit``), decoded and counted."""
        decoded = self.decoder.decode_frames(frames)
        self.totals["fallback_frames"] += decoded.fallback
        self.totals.update({key: n for key, n in decoded.frames.items() if key != "read"})  # read: when admitted
        self.totals["signal_samples"] += decoded.samples
        self.totals["non_finite_values"] += decoded.non_finite
        self.unknown_ids.update(decoded.unknown_ids)
        self.decode_error_ids.update(decoded.decode_errors)
        self.dropped_values.update(decoded.non_finite_signals)
        self.length_mismatch.update(decoded.length_mismatch)
        for key, reason in decoded.length_reasons.items():
            self.length_reasons.setdefault(key, reason)
        self.totals["batches"] += 1
        self.seq += 1
        if not len(frames):
            now = self.guard.clock if self.guard.clock is not None else 0.0
            return messages.Signals(self.source_name, self.seq, now, now, decoded.frames, decoded.batch, {})
        start, end = float(frames.t.min()), float(frames.t.max())
        self.first_time = start if self.first_time is None else min(self.first_time, start)
        self.last_time = end if self.last_time is None else max(self.last_time, end)
        events = {name: np.sort(frames.t[rows]) for name, rows in decoded.event_rows.items()}
        return messages.Signals(self.source_name, self.seq, start, end, decoded.frames, decoded.batch, events)

    def tick_message(self, now: float) -> messages.Signals:
        """An empty batch: a quiet live bus still moves event time on, so windows close."""
        now += self.guard.offset  # in the current epoch
        self.seq += 1
        self.totals["ticks"] += 1
        return messages.Signals(self.source_name, self.seq, now, now, {}, messages.FlatBatch.empty())

    def faults(self) -> dict[str, Any]:
        """What the reader left out or found odd, for the summary and the health message."""
        guard = self.guard
        return {
            "frames_quarantined": guard.quarantined + (len(guard.held) if guard.held is not None else 0),
            "clock_epochs": list(guard.epochs), "clock_gaps": guard.gaps,
            "dropped_values": dict(self.dropped_values.most_common()),
            "length_mismatch_ids": {f"0x{k:X}": {"frames": n, "reason": self.length_reasons.get(k, "")}
                                    for k, n in self.length_mismatch.most_common()},
        }

    def end_message(self, extra: Mapping[str, int] | None = None) -> messages.EndOfStream:
        self.guard.finish()
        self.seq += 1
        totals = {key: int(self.totals.get(key, 0)) for key in messages.FRAME_COUNTERS}
        totals["signal_samples"] = int(self.totals["signal_samples"])
        totals.update(extra or {})
        return messages.EndOfStream(self.source_name, self.seq, self.last_time, totals)
