"""Where CAN frames come from: a live python-can bus, or the replay of a recorded log.

python-can's log readers stop at the first line they cannot parse, and a logger that lost power
leaves a truncated last line. ``LogSource`` reads text logs (.log, .asc, .trc, .csv) line by line
through python-can's own reader for the format; when that reader fails on a line, the line is
recorded as a ``BadRecord`` (file, line number, reason) and reading resumes on the next line
with a fresh reader that is first fed the file's header again. Binary logs (.blf, .mf4) cannot be
resynchronised that way: a corrupt block ends the file, and that too is recorded.

``LogSource.frames`` yields one ``can.Message`` at a time (and paces a replay);
``LogSource.frame_batches`` yields columns (``Frames``) as fast as possible: candump and ASC logs
through the bulk parser of ``logparse`` (same frames, same bad records), the other formats through
the reader above, converted in chunks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

import can
from can.io.asc import ASC_MESSAGE_REGEX, ASCReader
from can.io.player import MESSAGE_READERS

from .clock import Clock, SystemClock
from .errors import LogFormatError, SourceError
from .frames import Frames
from .logparse import (
    CHUNK_FRAMES,
    PARSERS,
    BadRecord,
    ParseCounts,
    asc_line_problem,
    asc_start_time,
    column_problem,
    frame_problem,
)

LOG = logging.getLogger(__name__)

TEXT_FORMATS = frozenset({".log", ".asc", ".trc", ".csv"})
SUPPORTED_FORMATS = tuple(sorted(set(MESSAGE_READERS) - {".db"}))
MAX_BUS_RECORDS = 1000  # a live bus runs for months: its bad frames are counted, the first ones kept


class FrameSource(Protocol):
    """An iterator of frames. ``None`` means 'nothing arrived for a while' (live buses only),
    so the reader can flush a batch on a quiet bus."""

    name: str
    bad_records: list[BadRecord]

    def frames(self, stop: threading.Event) -> Iterator[can.Message | None]: ...

    def close(self) -> None: ...


class _LineFeed:
    """A text file as python-can's readers consume it (iteration, ``readline``), which keeps the
    number and text of the line last handed out, and can first replay saved header lines."""

    def __init__(self, file: TextIO, lineno: int = 0, prefix: list[str] | None = None,
                 check: Callable[[int, str], None] | None = None) -> None:
        self._file = file
        self.check = check  # called with each body line read from the file (ASC: garbage is counted)
        self.body = False  # set once the reader has read the header
        self._prefix = list(prefix or ())
        self.lineno = lineno  # number of the last line read from the file
        self.current = ""
        self.from_file = False  # whether the current line came from the file (not the prefix)
        self.new_lines = 0  # lines read from the file by this feed
        self.unterminated = False  # the file's last line has no newline
        self._keep: list[str] | None = []  # lines seen, until the header is known

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readline(self, size: int = -1) -> str:
        if self._prefix:
            line = self._prefix.pop(0)
            self.from_file = False
        else:
            line = self._file.readline()
            if not line:
                return ""
            self.lineno += 1
            self.new_lines += 1
            self.from_file = True
            self.unterminated = not line.endswith("\n")
            if self.body and self.check is not None:
                self.check(self.lineno, line)
        self.current = line
        if self._keep is not None:
            self._keep.append(line)
        return line

    def seen_before_current(self) -> list[str]:
        return list((self._keep or [])[:-1])

    def stop_keeping(self) -> None:
        self._keep = None

    def close(self) -> None:
        pass  # the file belongs to LogSource

    closed = False


class _CountingASCReader(ASCReader):
    """python-can's ASC reader, which tells its feed where the header ends (garbage after it
    is counted, not skipped in silence)."""

    def _extract_header(self) -> None:
        super()._extract_header()
        feed = self.file
        if isinstance(feed, _LineFeed):
            feed.body = True
            if feed.from_file and feed.check is not None:
                feed.check(feed.lineno, feed.current)  # the line that ended the header


class LogSource:
    """Replay of a recorded log, as fast as possible (speed 0) or at ``speed`` times real time."""

    def __init__(self, path: str | Path, *, speed: float = 0.0, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.speed = speed
        self.clock = clock or SystemClock()
        self.bad_records: list[BadRecord] = []
        suffix = self.path.suffix.lower()
        if suffix not in SUPPORTED_FORMATS:
            raise LogFormatError(
                f"{self.path}: unsupported log format {suffix or '(no suffix)'!r}; "
                f"supported: {', '.join(SUPPORTED_FORMATS)}"
            )
        if not self.path.is_file():
            raise LogFormatError(f"{self.path}: no such file")
        self._suffix = suffix
        self.parse_counts = ParseCounts()  # filled by frame_batches for the logs it parses in bulk
        if suffix not in TEXT_FORMATS:
            self._open_binary().stop()  # an empty or foreign file is refused now, in one line
        # An ASC log's times count from its header's date: added here, so every frame (and every
        # message downstream) carries real time, not seconds from 1970.
        start = asc_start_time(self.path) if suffix == ".asc" else None
        self.time_offset: float = start[0] if start is not None else 0.0
        self.start_date: str | None = start[1] if start is not None else None

    def _open_binary(self) -> Any:
        if self.path.stat().st_size == 0:
            raise LogFormatError(f"{self.path}: empty file, not a {self._suffix} log")
        try:
            return can.LogReader(self.path)
        except Exception as exc:  # struct.error, BLFParseError, MdfException, ...
            reason = " ".join(str(exc).split())[:200]
            raise LogFormatError(f"{self.path}: not a readable {self._suffix} log: {type(exc).__name__}: {reason}") from None

    def frames(self, stop: threading.Event) -> Iterator[can.Message | None]:
        messages = self._read_text() if self._suffix in TEXT_FORMATS else self._read_binary()
        if self.time_offset:
            messages = self._shifted(messages)
        if self.speed <= 0:
            for msg in messages:
                if stop.is_set():
                    return
                yield msg
            return
        start_wall = self.clock.monotonic()
        start_t: float | None = None
        for msg in messages:
            if stop.is_set():
                return
            if start_t is None:
                start_t = msg.timestamp
            due = start_wall + (msg.timestamp - start_t) / self.speed
            if self.clock.wait(stop, due - self.clock.monotonic()):
                return
            yield msg

    def _shifted(self, messages: Iterator[can.Message]) -> Iterator[can.Message]:
        for msg in messages:
            msg.timestamp += self.time_offset
            yield msg

    def frame_batches(self, stop: threading.Event, max_frames: int = CHUNK_FRAMES) -> Iterator[Frames]:
        """The log as ``Frames`` of at most ``max_frames`` frames each, for replays as fast as
        possible: ``speed`` does not apply here (pacing is ``frames()``'s).

        candump (.log) and Vector ASC (.asc) logs are parsed in bulk by ``logparse``: the frames and
        the ``bad_records`` are those of ``frames()``, and ``parse_counts`` says how many lines the
        bulk parser left to python-can's reader. The other formats are read as ``frames()`` reads
        them and converted a chunk at a time; a frame that no ``Frames`` row can hold (an id beyond
        32 bits, more than 64 bytes) is a bad record there.
        """
        parse = PARSERS.get(self._suffix)
        if parse is not None:
            batches = parse(self.path, self.bad_records, chunk_frames=max_frames, counts=self.parse_counts)
        else:
            batches = self._message_batches(max_frames)
        try:
            for batch in batches:
                if stop.is_set():
                    return
                yield dataclasses.replace(batch, t=batch.t + self.time_offset) if self.time_offset else batch
        finally:
            batches.close()  # closes the file now, not when the generator is collected
        if parse is not None:
            LOG.debug("%s: %d lines, %d frames, %d lines read by python-can's reader", self.path,
                      self.parse_counts.lines, self.parse_counts.frames, self.parse_counts.slow_lines)

    def _message_batches(self, max_frames: int) -> Generator[Frames, None, None]:
        messages = self._read_text() if self._suffix in TEXT_FORMATS else self._read_binary()
        batch: list[can.Message] = []
        for count, msg in enumerate(messages, 1):
            problem = column_problem(msg)
            if problem:
                self._bad(None, f"frame {count}: {problem}")
                continue
            batch.append(msg)
            if len(batch) >= max_frames:
                yield Frames.from_messages(batch)
                batch = []
        if batch:
            yield Frames.from_messages(batch)

    def _bad(self, line: int | None, reason: str, text: str = "") -> None:
        record = BadRecord(str(self.path), line, reason, text.strip()[:80])
        LOG.info("skipped %s", record)
        self.bad_records.append(record)

    def _check_asc_line(self, lineno: int, line: str) -> None:
        if not ASC_MESSAGE_REGEX.match(line.strip()) and (problem := asc_line_problem(line)):
            self._bad(lineno, problem, line)

    def _read_text(self) -> Iterator[can.Message]:
        reader_cls = _CountingASCReader if self._suffix == ".asc" else MESSAGE_READERS[self._suffix]
        check = self._check_asc_line if self._suffix == ".asc" else None
        # utf-8-sig: a byte-order mark is no part of the first line
        with self.path.open("r", encoding="utf-8-sig", errors="replace") as file:
            feed = _LineFeed(file, check=check)
            header: list[str] | None = None
            while True:
                try:
                    for msg in reader_cls(feed):  # type: ignore[arg-type]  # python-can's readers take any text file
                        if header is None:
                            header = feed.seen_before_current()
                            feed.stop_keeping()
                        problem = frame_problem(msg) or column_problem(msg)
                        if problem:
                            self._bad(feed.lineno, problem, feed.current)
                            continue
                        feed.unterminated = feed.unterminated and not feed.from_file
                        yield msg
                    break
                except Exception as exc:  # python-can raises ValueError, IndexError, ... per line
                    if not feed.from_file or feed.new_lines == 0:
                        # The header itself does not parse: nothing after it can be trusted.
                        self._bad(feed.lineno or None, f"unreadable header: {type(exc).__name__}: {exc}", feed.current)
                        return
                    self._bad(feed.lineno, f"{type(exc).__name__}: {exc}", feed.current)
                    prefix = header if header is not None else feed.seen_before_current()
                    feed = _LineFeed(file, feed.lineno, prefix, check)
            recorded = bool(self.bad_records) and self.bad_records[-1].line == feed.lineno \
                and self.bad_records[-1].reason == asc_line_problem("?")  # garbage, already counted
            if feed.unterminated and feed.current.strip() and not recorded:
                # A last line without newline that gave no frame: a logger that lost power.
                self._bad(feed.lineno, "truncated last line (no newline, no frame)", feed.current)

    def _read_binary(self) -> Iterator[can.Message]:
        count = 0
        reader = self._open_binary()
        try:
            for msg in reader:
                problem = frame_problem(msg) or column_problem(msg)
                if problem:
                    self._bad(None, f"frame {count + 1}: {problem}")
                    continue
                count += 1
                yield msg
        except Exception as exc:
            self._bad(None, f"unreadable after frame {count}: {type(exc).__name__}: {exc}")
        finally:
            reader.stop()
        # python-can's BLF reader stops quietly at a cut-off container; the header knows better.
        declared = getattr(reader, "file_size", None)
        actual = self.path.stat().st_size
        if isinstance(declared, int) and declared > actual:
            self._bad(None, f"truncated after frame {count}: file is {actual} bytes, its header says {declared}")

    def close(self) -> None:
        pass


def _plain(msg: can.Message) -> bool:
    """A classic data frame whose length is its DLC and whose id fits 32 bits: what nearly every
    frame is, and what ``frame_problem`` and ``column_problem`` have nothing to say about."""
    return (not msg.is_fd and not msg.is_error_frame and msg.dlc == len(msg.data) <= 8
            and 0 <= msg.arbitration_id <= 0xFFFFFFFF)


def bursts(source: FrameSource, stop: threading.Event) -> Iterator[list[can.Message]]:
    """A source's frames in the lists a reader takes at once: a live bus's bursts as read
    (``BusSource.bursts``), any other source's frames one by one; [] where ``frames()`` says
    ``None`` (nothing arrived for a while)."""
    if isinstance(source, BusSource):
        yield from source.bursts(stop)
        return
    for msg in source.frames(stop):
        yield [] if msg is None else [msg]


class BusSource:
    """Frames from a live python-can bus (SocketCAN, or any interface python-can knows).

    The bus is read in bursts, not woken once a frame: a blocking ``recv`` waits for the first
    frame, then the reader lets ``poll_seconds`` of frames queue up (in the kernel's socket buffer
    on SocketCAN; timestamps are taken on arrival, not when read) and drains them without waiting.
    At 8,000 frames/s that is about 100 wake-ups a second instead of 8,000: each wake-up costs more
    CPU than reading a frame (measured: ``./build.sh bench``, live CPU). A frame reaches the batch
    at most ``poll_seconds`` after it arrived. The reader takes a burst at a time (``bursts``) and
    looks at the clock (flush on time) after each; ``frames()`` follows each burst with a
    ``None``, as an idle timeout is."""

    def __init__(self, bus: can.BusABC | None = None, *, idle_timeout: float = 0.25, poll_seconds: float = 0.01,
                 max_burst: int = 4096, **bus_kwargs: Any) -> None:
        self._owns_bus = bus is None
        try:
            self.bus = bus if bus is not None else can.Bus(**bus_kwargs)
        except Exception as exc:
            raise SourceError(f"cannot open CAN bus {bus_kwargs}: {type(exc).__name__}: {exc}") from exc
        self.name = f"{self.bus.channel_info}"
        self.idle_timeout = idle_timeout
        self.poll_seconds = poll_seconds
        self.max_burst = max_burst
        self.bad_records: list[BadRecord] = []  # the first MAX_BUS_RECORDS of them; ``refused`` counts all
        self.refused = 0
        self.count = 0

    def frames(self, stop: threading.Event) -> Iterator[can.Message | None]:
        for burst in self.bursts(stop):
            yield from burst
            yield None

    def bursts(self, stop: threading.Event) -> Iterator[list[can.Message]]:
        """The frames as read: each burst in one list ([] when the bus was idle for
        ``idle_timeout``), frames that cannot be real left out (counted)."""
        recv, drain, sound = self.bus.recv, self._drain(), self._sound
        while not stop.is_set():
            msg = recv(timeout=self.idle_timeout)
            if msg is None:
                yield []
                continue
            if self.poll_seconds > 0:
                stop.wait(self.poll_seconds)
            burst = [msg]
            # at most max_burst: a bus faster than we drain, we hand over what we have
            while len(burst) < self.max_burst and (msg := drain()) is not None:
                burst.append(msg)
            first = self.count + 1
            self.count += len(burst)
            if all(map(_plain, burst)):
                yield burst
            else:
                yield [m for i, m in enumerate(burst, first) if sound(m, i)]

    def _drain(self) -> Callable[[], can.Message | None]:
        """``bus.recv(timeout=0)``, for draining what has queued. Where python-can's ``recv`` is
        its base class's and no filter is set, it adds nothing to the interface's own
        ``_recv_internal`` but a log call and a clock reading per frame (a third of a frame's cost
        on the virtual bus): the interface's is called directly."""
        bus = self.bus
        if type(bus).recv is can.BusABC.recv and bus.filters is None:
            internal = bus._recv_internal
            return lambda: internal(0)[0]
        return lambda: bus.recv(timeout=0)

    def _sound(self, msg: can.Message, number: int) -> bool:
        problem = frame_problem(msg) or column_problem(msg)
        if problem:  # a driver or a gateway can hand over anything
            if len(self.bad_records) < MAX_BUS_RECORDS:
                self.bad_records.append(BadRecord(self.name, None, f"frame {number}: {problem}"))
            self.refused += 1
            return False
        return True

    def close(self) -> None:
        if self._owns_bus:
            self.bus.shutdown()
