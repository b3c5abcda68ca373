"""The reader's limit check as it was before it decoded only the watched signals and judged
every (rule, signal) pair in one table (main at 0242853): the reference the tests compare
``LimitCheck.check`` with. Its code and docstrings are as they were; ``check_frames`` is what
the reader did with it (``CanReaderComponent._limit_crossed``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from telemetry.edge import messages
from telemetry.edge.decode import Decoder
from telemetry.edge.frames import Frames
from telemetry.edge.rules import LimitRule, Rule


def check_frames(check: LimitCheck, frames: Frames, decoder: Decoder) -> bool:
    """The reader's check of frames just admitted, as it was."""
    watched = check.watched(frames, decoder.names_of)
    return bool(len(watched)) and check.crossed(decoder.decode_frames(watched).batch)


class LimitCheck:
    """Whether freshly decoded samples take a signal across a ``limit`` rule, so that a live
    reader, which publishes long batches (cheap for every component), publishes at once then and
    the alert does not wait for the batch to fill. Only a hint: the detector judges every sample
    as always. A batch is cut short when a (rule, signal) starts being across its limit, not
    again while it stays there (a signal parked beyond a limit must not cut every batch short).
    Only the frames that can carry a signal of a limit rule are decoded for it (``watched``):
    the open batch is decoded once, when it is published."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.evaluators = [r.evaluator() for r in rules if isinstance(r, LimitRule)]
        self._across: set[tuple[int, str]] = set()  # (rule, signal) last seen across its limit
        self._watch: dict[int, bool] = {}  # frame key (id | extended << 32) -> carries a watched signal
        self.crossings = 0

    def watched(self, frames: Frames, names_of: Callable[[int, bool], tuple[str, ...]]) -> Frames:
        """The frames of ``frames`` whose id can carry a signal some limit rule watches
        (``names_of``: the decoder's names of an id's signals); error and remote frames carry none."""
        if not self.evaluators or not len(frames):
            return frames.take(slice(0, 0))
        keys = frames.id.astype(np.int64) | (frames.extended.astype(np.int64) << 32)
        keys[frames.error | frames.remote] = -1
        watch = self._watch
        found, which = np.unique(keys, return_inverse=True)
        hits = []
        for key in found.tolist():
            hit = watch.get(key)
            if hit is None:
                names = names_of(key & 0xFFFFFFFF, bool(key >> 32)) if key >= 0 else ()
                hit = watch[key] = any(e.name_mask(names).any() for e in self.evaluators) if names else False
            hits.append(hit)
        return frames.take(np.array(hits, dtype=bool)[which])

    def crossed(self, batch: messages.FlatBatch) -> bool:
        """True when a sample of ``batch`` starts a crossing: it is across its rule's limit, and
        the signal's sample before it (in this batch, or the last one checked) was not."""
        new = False
        names = batch.names
        for i, evaluator in enumerate(self.evaluators):
            rule = evaluator.rule
            selected = evaluator.select(batch) if len(batch) else None
            if selected is None:
                continue
            ids, _, v = selected  # each signal's samples contiguous, in order
            lo = -math.inf if rule.min is None else rule.min
            hi = math.inf if rule.max is None else rule.max
            over = (v < lo) | (v > hi)
            first = np.ones(len(ids), dtype=bool)
            first[1:] = ids[1:] != ids[:-1]
            before = np.empty(len(ids), dtype=bool)
            before[1:] = over[:-1]
            before[first] = [(i, names[k]) in self._across for k in ids[first].tolist()]
            if (over & ~before).any():
                new = True
            last = np.append(first[1:], True)  # each signal's latest sample: where it is now
            for k, now in zip(ids[last].tolist(), over[last].tolist()):
                if now:
                    self._across.add((i, names[k]))
                else:
                    self._across.discard((i, names[k]))
        if new:
            self.crossings += 1
        return new
