"""The clock guard's common case (every frame near the clock: one comparison a frame) against its
frame-by-frame judgement, from the first batch of a stream on."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from support.helpers import frame
from telemetry.edge.frames import Frames
from telemetry.edge.reader import ClockGuard

T0 = 1.7e9
STEPS = st.one_of(st.floats(-0.5, 3.0), st.sampled_from([-1e4, 1e4, 7.0, math.nan, math.inf, 1e10]))


def frames_at(times: list[float]) -> Frames:
    return Frames.from_messages([frame(t, 0x100, bytes(8)) for t in times])


def judged(guard: ClockGuard, frames: Frames, first: bool) -> tuple:
    if first:
        guard._start(frames.t)  # what the first batch starts from, then every frame judged one by one
    kept = guard._judge(frames)
    return kept.t.tolist(), guard.clock, guard.offset, guard.quarantined, guard.gaps, guard.epochs


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(STEPS, min_size=1, max_size=40), min_size=1, max_size=4))
def test_admit_gives_what_judging_every_frame_gives(batches):
    fast, plain = ClockGuard(skew=5.0, confirm=4), ClockGuard(skew=5.0, confirm=4)
    t = T0
    for steps in batches:
        times = []
        for step in steps:
            t = t + step if math.isfinite(t + step) and abs(step) < 1e5 else t
            times.append(t + step if not math.isfinite(step) or abs(step) >= 1e5 else t)
        frames = frames_at(times)
        kept = fast.admit(frames)
        got = (kept.t.tolist(), fast.clock, fast.offset, fast.quarantined, fast.gaps, fast.epochs)
        assert str(got) == str(judged(plain, frames, plain.clock is None))  # str: NaN equal to NaN
        if plain.held is not None or fast.held is not None:
            return  # frames held for confirmation: the next batch's judgement depends on them


def test_a_first_batch_near_its_median_is_admitted_whole_and_sets_the_clock():
    guard = ClockGuard(skew=5.0, confirm=4)
    kept = guard.admit(frames_at([T0, T0 + 1, T0 + 2, T0 + 2.5]))
    assert kept.t.tolist() == [T0, T0 + 1, T0 + 2, T0 + 2.5] and guard.clock == T0 + 2.5 and not guard.quarantined


def test_a_first_batch_of_no_possible_time_is_quarantined_and_sets_no_clock():
    guard = ClockGuard(skew=5.0, confirm=4)
    assert not len(guard.admit(frames_at([math.nan, 1e12, -1e12])))
    assert guard.clock is None and guard.quarantined == 3
    assert guard.admit(frames_at([T0])).t.tolist() == [T0] and guard.clock == T0

