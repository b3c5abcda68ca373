"""Start-up: python-can's .mf4 support (asammdf, and pandas with it) loads when an .mf4 file is read or
written, not in every process that imports the package (``telemetry/edge/lazymf4.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
HEAVY = ("asammdf", "pandas")

# A fresh interpreter, as the CLI starts: the package imported, a candump and an .asc log replayed,
# then an .mf4 log written and read by python-can's own MF4Writer/MF4Reader (through our LogSource).
SCRIPT = r'''
import json, sys, threading
from pathlib import Path

import pytest
HEAVY = ("asammdf", "pandas")
loaded = lambda: sorted(m for m in HEAVY if m in sys.modules)
out, drive, short = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {}
import telemetry.tools.cli  # noqa: F401  (what `python -m telemetry` imports: cantools, python-can)
seen["import"] = loaded()
import can
from telemetry.edge.sources import LogSource
from telemetry.tools.replay import replay
summary = replay(short, out_dir=out / "candump", config=drive)
frames = [m for m in LogSource(short).frames(threading.Event()) if m is not None][:300]
with can.Logger(str(out / "short.asc")) as writer:  # python-can's ASCWriter
    for m in frames:
        writer.on_message_received(m)
asc = replay(out / "short.asc", out_dir=out / "asc", config=drive)
seen["replayed"] = loaded()
with can.Logger(str(out / "short.mf4")) as writer:  # python-can's MF4Writer
    for m in frames:
        writer.on_message_received(m)
seen["written"] = loaded()
source = LogSource(out / "short.mf4")
back = [m for m in source.frames(threading.Event()) if m is not None]
seen["read"] = loaded()
print(json.dumps({"seen": seen, "candump_frames": summary["frames_read"], "asc_frames": asc["frames_read"],
                  "mf4_class": type(source._open_binary()).__module__ + "." + type(source._open_binary()).__name__,
                  "same": [(m.arbitration_id, bytes(m.data).hex(), round(m.timestamp, 6)) for m in back]
                          == [(m.arbitration_id, bytes(m.data).hex(), round(m.timestamp, 6)) for m in frames]}))
'''


def test_the_package_and_a_candump_or_asc_replay_load_no_asammdf_or_pandas_until_an_mf4_is_used(tmp_path, short_drive):
    # GIVEN asammdf installed (requirements.txt: the laptop's .mf4 replays)
    assert subprocess.run([sys.executable, "-c", "import asammdf"], capture_output=True).returncode == 0
    # WHEN a fresh interpreter imports the package, replays a candump and an .asc log, then writes and reads an .mf4
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(SAMPLE / "vehicle.toml"), str(short_drive)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # THEN neither asammdf nor pandas was imported until the .mf4 was written, and then both were
    assert result["seen"] == {"import": [], "replayed": [], "written": list(HEAVY), "read": list(HEAVY)}
    assert result["candump_frames"] > 1000 and result["asc_frames"] == 300
    # AND the .mf4 was written and read by python-can's own classes, frame for frame
    assert result["mf4_class"] == "can.io.mf4.MF4Reader"
    assert result["same"] is True


def test_an_mf4_is_read_when_asammdf_is_imported_first(tmp_path):
    # GIVEN a process that imported asammdf before the package (nothing is deferred then)
    script = ("import asammdf, can, sys, telemetry.edge.sources as s, threading\n"
              "p = sys.argv[1]\n"
              "w = can.Logger(p); w.on_message_received(can.Message(timestamp=1.0, arbitration_id=0x123, data=b'\\x01\\x02')); w.stop()\n"
              "print([(m.arbitration_id, bytes(m.data)) for m in s.LogSource(p).frames(threading.Event()) if m is not None])")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "one.mf4")], capture_output=True, text=True, timeout=120)
    # THEN python-can reads and writes it as before
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(291, b'\\x01\\x02')]"


def test_start_forkserver_launches_the_server_with_the_components_preloaded_and_returns():
    from telemetry.tools.forkserver import PRELOAD, start_forkserver

    # WHEN a command starts the forkserver early (twice: the second is a no-op)
    start_forkserver()
    start_forkserver()
    # THEN one server, a child of this process, is importing (or has imported) the components
    mine = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _parent(pid) == os.getpid() and b"forkserver" in _cmdline(pid)]
    assert len(mine) == 1
    assert all(module.encode() in _cmdline(mine[0]) for module in PRELOAD)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_processes_replay_starts_the_forkserver_before_its_own_start_up(tmp_path, monkeypatch):
    from telemetry.edge.errors import ConfigError
    from telemetry.tools import replay as replay_module

    calls: list[str] = []

    def config(*args, **kwargs):
        calls.append("config")
        raise ConfigError("stop here")

    monkeypatch.setattr(replay_module, "start_forkserver", lambda: calls.append("forkserver"))
    monkeypatch.setattr(replay_module, "resolve_config", config)
    for processes in (False, True):
        with pytest.raises(ConfigError):
            replay_module.replay(SAMPLE / "drive.log", out_dir=tmp_path, processes=processes)
    assert calls == ["config", "forkserver", "config"]  # threads: no server; processes: the server first
