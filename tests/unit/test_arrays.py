"""``arrays.distinct`` is ``np.unique`` of integers, and a replay never imports ``numpy.ma`` (whose
import ``np.unique(a)`` and ``np.median`` cost each component's process 22 ms and 1.3 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from telemetry.edge.arrays import distinct, groups

ROOT = Path(__file__).resolve().parents[2]


@given(hnp.arrays(st.sampled_from([np.int64, np.uint32, np.int8, np.uint64]), st.integers(0, 300),
                  elements=st.integers(0, 120)))
def test_distinct_is_np_unique_of_integers(a):
    got, want = distinct(a), np.unique(a)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want)


@given(hnp.arrays(st.sampled_from([np.int64, np.uint32]), st.integers(0, 300), elements=st.integers(0, 40)))
def test_groups_is_np_unique_with_index_and_inverse(a):
    got, want = groups(a), np.unique(a, return_index=True, return_inverse=True)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    assert got[0].dtype == want[0].dtype


def test_a_replay_does_not_import_numpy_ma(tmp_path):
    code = f"""
import sys
from telemetry.tools.replay import replay
replay({str(ROOT / 'vehicles/sample/drive.log')!r}, out_dir={str(tmp_path)!r},
       config={str(ROOT / 'vehicles/sample/vehicle.toml')!r}, report=False)
print(sorted(m for m in sys.modules if m == 'numpy.ma' or m.startswith('numpy.ma.')))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT / "shared"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
