"""``affinity.one_cpu``: the calling thread and the threads it starts share one CPU inside, and the
thread has its own mask back after."""

from __future__ import annotations

import os
import threading

from telemetry.tools import affinity


def test_current_cpu_is_one_this_thread_may_run_on():
    assert affinity.current_cpu() in os.sched_getaffinity(0)


def test_one_cpu_pins_this_thread_and_the_threads_it_starts_then_gives_the_mask_back():
    mask = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    with affinity.one_cpu() as cpu:
        inside = os.sched_getaffinity(0)
        worker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        worker.start()
        worker.join()
    assert os.sched_getaffinity(0) == mask
    if len(mask) > 1:
        assert cpu in mask
        assert inside == seen[0] == {cpu}
    else:  # nothing to choose from: nothing pinned
        assert cpu is None and inside == seen[0] == mask


def test_one_cpu_leaves_a_thread_already_on_one_cpu_alone():
    mask = os.sched_getaffinity(0)
    only = min(mask)
    os.sched_setaffinity(0, {only})
    try:
        with affinity.one_cpu() as cpu:
            assert cpu is None
            assert os.sched_getaffinity(0) == {only}
        assert os.sched_getaffinity(0) == {only}
    finally:
        os.sched_setaffinity(0, mask)


def test_one_cpu_gives_the_mask_back_when_the_body_raises():
    mask = os.sched_getaffinity(0)
    try:
        with affinity.one_cpu():
            raise KeyError("boom")
    except KeyError:
        pass
    assert os.sched_getaffinity(0) == mask


def test_one_cpu_not_enabled_pins_nothing():
    mask = os.sched_getaffinity(0)
    with affinity.one_cpu(False) as cpu:
        assert cpu is None and os.sched_getaffinity(0) == mask
