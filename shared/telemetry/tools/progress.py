"""A progress line on a terminal for long replays: frames, frames/s, share of the file, alerts.

Shown only when the stream is a terminal, and only once the replay has run ``delay`` seconds
(a short replay prints nothing extra). The frame count comes from the replay's taps (what the
reader published); the share of the file is estimated from the file's size and the length of
its first lines (text formats only: a binary log shows no percentage).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TextIO

from telemetry.tools.taps import ReplayTaps

TEXT_SUFFIXES = (".log", ".asc", ".trc", ".csv")


def estimate_frames(log: str | Path, sample: int = 1 << 18) -> int | None:
    """About how many frames a text log holds (its size over the mean length of its first
    lines); None for a binary log or an empty one."""
    path = Path(log)
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return None
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(sample)
    lines = head.count(b"\n")
    if not lines:
        return None
    return max(1, round(size / (len(head) / lines)))


class Progress:
    """Writes ``\\r``-refreshed lines to ``stream`` from a thread while a replay runs."""

    def __init__(self, taps: ReplayTaps, log: str | Path, stream: TextIO, *, delay: float = 2.0,
                 interval: float = 0.25) -> None:
        self.taps = taps
        self.stream = stream
        self.delay = delay
        self.interval = interval
        self.total = estimate_frames(log)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._shown = False
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def line(self, elapsed: float) -> str:
        frames = self.taps.frames_read
        rate = frames / elapsed if elapsed > 0 else 0.0
        text = f"{frames:>10,} frames  {rate:>9,.0f} frames/s"
        if self.total:
            share = min(frames / self.total, 0.99 if not self.taps.ended else 1.0)
            width = 20
            done = int(share * width)
            text = f"[{'#' * done}{'.' * (width - done)}] ~{100 * share:3.0f} %  " + text
        return text + f"  {len(self.taps.alerts)} alert messages"

    def start(self) -> Progress:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            with self._lock:
                self.stream.write("\r" + self.line(time.monotonic() - self._started) + "\033[K")
                self.stream.flush()
                self._shown = True
            self._stop.wait(self.interval)

    def clear(self) -> None:
        """Wipe the line (before something else is printed on the terminal)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.clear()
