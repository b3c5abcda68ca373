"""A batch of CAN frames as columns: how frames travel from a source to the decoder.

One array per field (times, ids, flags, lengths) and one payload matrix, instead of one
``can.Message`` per frame: a bulk log parser fills them directly, the vectorised decoder reads
every frame of one id at once, and a live bus's ``can.Message`` objects are converted once, at
the edge of the reader (``Frames.from_messages``).

The payload matrix is zero-padded to a width of 8 bytes (classic CAN) or 64 (when any frame of
the batch is CAN FD with more than 8 bytes); ``length`` says how many bytes each frame really
carries.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import can
import numpy as np

CLASSIC = 8
FD = 64


@dataclass(frozen=True)
class Frames:
    t: np.ndarray  # float64, event time in seconds (the frame's timestamp)
    id: np.ndarray  # uint32, arbitration id
    extended: np.ndarray  # bool, 29-bit id
    error: np.ndarray  # bool, error frame
    remote: np.ndarray  # bool, remote frame
    fd: np.ndarray  # bool, CAN FD frame
    length: np.ndarray  # uint8, data bytes carried (0-64)
    data: np.ndarray  # uint8 [n, 8 or 64], zero-padded past each frame's length

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls, width: int = CLASSIC) -> Frames:
        flag = np.empty(0, bool)
        return cls(np.empty(0), np.empty(0, np.uint32), flag, flag, flag, flag, np.empty(0, np.uint8),
                   np.empty((0, width), np.uint8))

    @classmethod
    def from_messages(cls, messages: Sequence[can.Message]) -> Frames:
        """python-can's frames (a live bus, a binary log) as columns: one C-level pass per column
        (``map``), the payloads joined once and put in their rows by one mask."""
        n = len(messages)
        datas = list(map(_DATA, messages))  # bytearrays (join and len take them as they are)
        if None in datas:
            datas = [b"" if d is None else d for d in datas]
        length = np.fromiter(map(len, datas), np.int64, n)
        longest = int(length.max()) if n else 0
        width = FD if longest > CLASSIC else CLASSIC
        kept = length
        if longest > FD:  # no row holds it (the readers refuse such frames): cut to the width
            datas = [d[:width] for d in datas]
            kept = np.minimum(length, width)
        blob = np.frombuffer(b"".join(datas), np.uint8)
        if len(blob) == n * width:  # every frame full: the usual case
            data = blob.reshape(n, width).copy()
        else:
            data = np.zeros((n, width), np.uint8)
            data[np.arange(width) < kept[:, None]] = blob
        return cls(
            np.fromiter(map(_TIMESTAMP, messages), np.float64, n),
            np.fromiter(map(_ID, messages), np.uint32, n),
            np.fromiter(map(_EXTENDED, messages), bool, n),
            np.fromiter(map(_ERROR, messages), bool, n),
            np.fromiter(map(_REMOTE, messages), bool, n),
            np.fromiter(map(_FD, messages), bool, n),
            length.astype(np.uint8),
            data,
        )

    def to_messages(self) -> list[can.Message]:
        """Back to python-can's frames (the per-frame fallback, and tests)."""
        return [
            can.Message(timestamp=float(self.t[i]), arbitration_id=int(self.id[i]),
                        is_extended_id=bool(self.extended[i]), is_error_frame=bool(self.error[i]),
                        is_remote_frame=bool(self.remote[i]), is_fd=bool(self.fd[i]),
                        dlc=int(self.length[i]), data=bytes(self.data[i, :self.length[i]]))
            for i in range(len(self))
        ]

    def keys(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The frame key (id | extended << 32) of the frames at ``rows``: a standard and an
        extended frame of the same id number are different messages."""
        return self.id[rows].astype(np.int64) | (self.extended[rows].astype(np.int64) << 32)

    def take(self, index: np.ndarray | slice) -> Frames:
        """The frames at ``index`` (a slice, a boolean mask or positions)."""
        return Frames(self.t[index], self.id[index], self.extended[index], self.error[index], self.remote[index],
                      self.fd[index], self.length[index], self.data[index])

    @classmethod
    def concat(cls, parts: Sequence[Frames]) -> Frames:
        if not parts:
            return cls.empty()
        width = max(p.data.shape[1] for p in parts)
        data = [p.data if p.data.shape[1] == width else np.pad(p.data, ((0, 0), (0, width - p.data.shape[1])))
                for p in parts]
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(joined("t"), joined("id"), joined("extended"), joined("error"), joined("remote"), joined("fd"),
                   joined("length"), np.concatenate(data))


_DATA = operator.attrgetter("data")
_TIMESTAMP = operator.attrgetter("timestamp")
_ID = operator.attrgetter("arbitration_id")
_EXTENDED = operator.attrgetter("is_extended_id")
_ERROR = operator.attrgetter("is_error_frame")
_REMOTE = operator.attrgetter("is_remote_frame")
_FD = operator.attrgetter("is_fd")
