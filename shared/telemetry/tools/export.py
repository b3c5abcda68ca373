"""Exports of a replay for other tools (pandas, Grafana, a spreadsheet): ``--export csv|parquet DIR``.

Two tables, both long format:

- ``signals.csv`` / ``signals.parquet``: every decoded sample: ``time`` (seconds, as the log's
  time base gives it), ``signal`` (``<Message>.<Signal>``), ``value``, ``unit``;
- ``aggregates.csv`` / ``aggregates.parquet``: one row per signal per window: ``start``, ``end``,
  ``group``, ``signal``, ``unit`` and the window's statistics (``count``, ``min``, ``max``,
  ``mean``, ...; empty where the aggregator did not compute one).

The samples are written as the reader publishes them (``SignalsWriter`` listens on the replay's
taps), so a long log is never held in memory whole.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from telemetry.edge.errors import TelemetryError
from telemetry.edge.messages import STATISTICS, Signals, Window

FORMATS = ("csv", "parquet")


class ExportError(TelemetryError):
    pass


class _Table(Protocol):
    def write(self, columns: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class _Csv:
    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(names)
        self.names = list(names)

    def write(self, columns: Mapping[str, Any]) -> None:
        cols = [columns[n].tolist() if isinstance(columns[n], np.ndarray) else list(columns[n]) for n in self.names]
        self._writer.writerows(zip(*cols))

    def close(self) -> None:
        self._file.close()


class _Parquet:
    def __init__(self, path: Path, names: Sequence[str], types: Mapping[str, str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.schema = pa.schema([(n, pa.string() if types[n] == "str" else pa.float64()) for n in names])
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, columns: Mapping[str, Any]) -> None:
        self._writer.write_table(self._pa.table({n: columns[n] for n in self.schema.names}, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


def _open(path: Path, fmt: str, names: Sequence[str], types: Mapping[str, str]) -> _Table:
    if fmt == "csv":
        return _Csv(path.with_suffix(".csv"), names)
    if fmt == "parquet":
        try:
            return _Parquet(path.with_suffix(".parquet"), names, types)
        except ImportError:
            raise ExportError("--export parquet needs pyarrow (pip install pyarrow; ./build.sh setup installs it)") from None
    raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")


SIGNAL_COLUMNS = ("time", "signal", "value", "unit")
SIGNAL_TYPES = {"time": "float", "signal": "str", "value": "float", "unit": "str"}
AGGREGATE_COLUMNS = ("start", "end", "group", "signal", "unit", *STATISTICS)


class SignalsWriter:
    """Writes each signals batch it is given (``take``) to ``<dir>/signals.<fmt>``."""

    def __init__(self, out_dir: str | Path, fmt: str, units: Mapping[str, str]) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.units = units
        self.rows = 0
        self._table = _open(self.dir / "signals", fmt, SIGNAL_COLUMNS, SIGNAL_TYPES)

    def take(self, message: Signals) -> None:
        batch = message.batch
        if not len(batch):
            return
        names = np.array(batch.names, dtype=object)
        units = np.array([self.units.get(n, "") for n in batch.names], dtype=object)
        self._table.write({"time": batch.t, "signal": names[batch.ids], "value": batch.v, "unit": units[batch.ids]})
        self.rows += len(batch)

    def close(self) -> None:
        self._table.close()


def write_aggregates(out_dir: str | Path, fmt: str, windows: Sequence[Window], units: Mapping[str, str]) -> int:
    """``<dir>/aggregates.<fmt>``: one row per signal per window, in window order."""
    rows: dict[str, list[Any]] = {c: [] for c in AGGREGATE_COLUMNS}
    for w in sorted(windows, key=lambda w: (w.start, w.group)):
        for name, stats in w.signals.items():
            rows["start"].append(w.start)
            rows["end"].append(w.end)
            rows["group"].append(w.group)
            rows["signal"].append(name)
            rows["unit"].append(units.get(name, ""))
            for stat in STATISTICS:
                value = stats.get(stat)
                rows[stat].append(float(value) if value is not None else (None if fmt == "parquet" else ""))
    types = {c: "str" if c in ("group", "signal", "unit") else "float" for c in AGGREGATE_COLUMNS}
    table = _open(Path(out_dir) / "aggregates", fmt, AGGREGATE_COLUMNS, types)
    try:
        table.write(rows)
    finally:
        table.close()
    return len(rows["start"])
