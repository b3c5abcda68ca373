"""The detector's pieces as they were at 7e7b3f4, before session 22 cut their numpy calls: the
z-score rule's quick test of a clean batch (per sample, by block number) and the spread rule's
forward-filled table (a running count of runs and a take). The references the tests compare the
new ones with, code unchanged (``CELLS_AT_ONCE`` read from the rule's module)."""

from __future__ import annotations

import numpy as np

from telemetry.edge.rules import zscore as zscore_rule
from telemetry.edge.rules.zscore import ZScoreEvaluator, _kth_of_valley


def cannot_cross(self: ZScoreEvaluator, v: np.ndarray, padded: np.ndarray, start: np.ndarray, within: np.ndarray) -> bool:
    size, k = self.rule.baseline, self.rule.baseline // 2
    shared = min(self.SHARED, k, size - k)
    if shared < 1 or not np.abs(padded).max(initial=0.0) <= 1e300:
        return False
    head = within % shared == 0
    heads = np.flatnonzero(head)
    width = size - shared + 1
    if len(heads) * width > zscore_rule.CELLS_AT_ONCE:  # bounded memory: the baselines decide
        return False
    block = np.cumsum(head) - 1
    cores = np.ndarray((len(padded) - width + 1, width), padded.dtype, padded, 0, padded.strides * 2)[start[heads] + shared - 1]
    cores.sort(axis=1)
    low, high = cores[:, k - shared], cores[:, k]
    distance = np.maximum(low[:, None] - cores, cores - high[:, None])
    np.maximum(distance, 0.0, out=distance)  # falls then rises along the sorted core
    scale = np.maximum(1.4826 * _kth_of_valley(distance, k - shared), self.rule.min_scale)[block]
    deviation = np.maximum(v - low[block], high[block] - v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bool(((scale > 0) & (deviation / np.where(scale > 0, scale, 1.0) <= self.rule.threshold)).all())


def forward_filled(latest: np.ndarray, row: np.ndarray, col: np.ndarray, v: np.ndarray, n: int,
                   scratch: list[np.ndarray]) -> np.ndarray:
    width = len(latest)
    cells = width * n
    if len(scratch[0]) < cells:
        scratch[:] = [np.empty(cells, np.int64), np.empty(cells), np.empty(cells)]
    count, by_col, table = (a[:cells] for a in scratch)
    order = np.argsort(col.astype(np.int16) if width < 1 << 15 else col, kind="stable")  # by column, then row
    per_col = np.bincount(col, minlength=width)
    first = np.concatenate(([0], np.cumsum(per_col + 1)[:-1]))  # where each column's runs start
    runs = len(col) + width
    is_first = np.zeros(runs, bool)
    is_first[first] = True
    values, start = np.empty(runs), np.zeros(runs, np.int64)
    values[first] = latest
    values[~is_first] = v[order]
    start[~is_first] = row[order]
    start += np.repeat(np.arange(width) * n, per_col + 1)  # where each run starts in the column-by-column table
    used = np.append(start[1:] > start[:-1], True)  # not a run of no rows (``latest``, replaced in its first row)
    count.fill(0)
    count[start[used]] = 1
    np.cumsum(count, out=count)
    count -= 1
    np.take(values[used], count, out=by_col)
    out = table.reshape(n, width)
    np.copyto(out, by_col.reshape(width, n).T)
    return out
