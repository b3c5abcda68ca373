"""The forkserver that ``ProcessRuntime`` forks its components from, started as early as a command
knows it will need it.

A cold ``--processes`` replay waits for this server to import numpy, cantools and python-can
(``PRELOAD``) before the first component is forked. ``start_forkserver()`` launches it and returns
at once: its imports then run on the second core while the parent does its own start-up (its
imports, the configuration, the DBC files, the rules' check); the first child waits only for
what is left. It imports nothing heavy itself, so a command can call it first thing.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

# What the server imports before it forks a child: most of a component's start-up, once.
PRELOAD = ("telemetry.edge.components", "telemetry.tools.procruntime")


def start_forkserver() -> None:
    """Launch the forkserver with ``PRELOAD`` if it is not running; do not wait for its imports."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()
