"""Array helpers of the data path that numpy has, but at a cost the components should not pay.

``np.unique(a)`` without ``return_index``/``return_inverse``/``return_counts`` asks
``np.ma.is_masked``, and so imports ``numpy.ma`` on its first call: 22 ms and 1.3 MB of every
component's process (the reader's peak is within 1-2 MB of its 64 MB budget)."""

from __future__ import annotations

import numpy as np


def distinct(a: np.ndarray) -> np.ndarray:
    """The distinct values of ``a``, sorted: ``np.unique(a)``, for integers (what the data path
    asks it of; NaNs would each be kept)."""
    a = np.sort(a, axis=None)
    if len(a) <= 1:
        return a
    keep = np.empty(len(a), bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def groups(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(a, return_index=True, return_inverse=True)`` of a 1-d integer array: the
    distinct values, sorted; where each first occurs; each element's place among them. Without
    numpy's stable sort of every element (a merge sort: the decoder's keys are many, their
    distinct values few)."""
    values = distinct(a)
    inverse = np.searchsorted(values, a)
    first = np.full(len(values), len(a), np.int64)
    np.minimum.at(first, inverse, np.arange(len(a)))
    return values, first, inverse
