"""Keeping a one-process replay's threads on one CPU.

The four components of a replay in one process (``LocalRuntime``) share one interpreter lock: one
thread runs Python at a time, whatever the number of cores. Spread over several cores by the
scheduler, they hand the lock from core to core at every batch and every switch interval: each
hand-off wakes a thread on another core, and the batch's arrays move between the cores' caches.
On one core the same hand-off is a context switch with the data still in cache. Measured on a
2-vCPU machine (drive x9, 308,277 frames), the replay's threads used 2.1-2.3 s of CPU spread and
1.2-1.7 s on one core, and finished sooner (README, "Whole pipeline, against the naive loop").

``one_cpu()`` pins the calling thread, and so every thread it starts (Linux: a new thread
inherits its creator's CPU mask), to the CPU it is running on, and gives the thread its mask back
on leaving. Threads that already exist keep theirs. Where the system has no CPU masks (macOS), or
the thread may run on one CPU only already, it does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def current_cpu() -> int | None:
    """The CPU the calling thread is running on (Linux: ``/proc/thread-self/stat``), or None."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # after the command name (in parentheses, which may hold spaces): field 3, state, onwards;
    # field 39 is the CPU it last ran on
    fields = stat[stat.rfind(b")") + 1:].split()
    try:
        return int(fields[39 - 3])
    except (IndexError, ValueError):
        return None


@contextlib.contextmanager
def one_cpu(enabled: bool = True) -> Iterator[int | None]:
    """Pin the calling thread (and the threads it starts) to one of its CPUs while inside; the
    CPU, or None when nothing was pinned (``enabled`` False: nothing is)."""
    get = getattr(os, "sched_getaffinity", None)
    set_ = getattr(os, "sched_setaffinity", None)
    if not enabled or get is None or set_ is None:
        yield None
        return
    try:
        mask = get(0)
    except OSError:
        mask = set()
    if len(mask) <= 1:
        yield None
        return
    cpu = current_cpu()
    if cpu not in mask:
        cpu = min(mask)
    try:
        set_(0, {cpu})
    except OSError:  # a container that forbids it: run as the scheduler likes
        yield None
        return
    try:
        yield cpu
    finally:
        set_(0, mask)
