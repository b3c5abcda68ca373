"""A Greengrass core's layout in a temporary folder, and its functions started as the nucleus
starts them (``core.py`` is the process each runs)."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry.tools.recipes import Recipe

DRIVER = Path(__file__).with_name("core.py")


def nucleus_env(root: Path, recipe: Recipe) -> dict[str, str]:
    """What the nucleus sets for a component that may use IPC, plus the recipe's variables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home" / "ggc_user"),
        "SVCUID": "rehearsal-" + recipe.name,
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": str(root / "ipc.socket"),
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_IOT_THING_NAME": "car-01",
        "GG_ROOT_CA_PATH": str(root / "rootCA.pem"),
        **recipe.environment,
    }


@dataclass
class Function:
    """One Lambda component unpacked on the core: its code folder and its work folder."""

    recipe: Recipe
    code: Path
    work: Path
    env: dict[str, str]
    out: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    log: Path | None = None

    def start(self, events: Path | None = None, **extra: Any) -> None:
        spec = {"code": str(self.code), "handler": self.recipe.function["Handler"], "out": str(self.out),
                "function": self.recipe.function["FunctionName"], "binary_input": self.recipe.binary_input,
                "events": str(events) if events else None, **extra}
        spec_path = self.work.parent / f"{self.recipe.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        # -I -S: the interpreter of the core, without this machine's site-packages
        # stderr (the function's log) to a file: a pipe nobody reads while it runs could fill and block it
        self.log = self.work.parent / f"{self.recipe.name}.stderr"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(DRIVER), str(spec_path)], cwd=self.work,
                                         env=self.env, stdout=subprocess.PIPE, stderr=log, text=True)
        self._out = queue.Queue()
        self._pumping = threading.Thread(target=self._pump, name=f"stdout-{self.recipe.name}")
        self._pumping.start()

    def _pump(self) -> None:
        """The process's output, line by line, into ``self._out`` (a thread: no select on a
        buffered pipe, which can hold a line select does not see)."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.put(line.rstrip("\n"))
        self._out.put(None)

    def wait_for(self, word: str, timeout: float = 120.0) -> None:
        """Read the process's output until a line says ``word``; fail with its log if it ends first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._out.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                break
            self.lines.append(line)
            if line.strip() == word:
                return
        self.kill()
        raise AssertionError(f"{self.recipe.name} never said {word!r} (exit status {self.proc.returncode}):\n"
                             + "\n".join(self.lines) + "\n" + self.stderr[-3000:])

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the nucleus stops a component; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout, f"did not end within {timeout} s of SIGTERM")

    def wait_exit(self, timeout: float = 60.0, failure: str = "still running") -> int:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.recipe.name} {failure}") from None
        finally:
            self._finish()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._finish()

    def _finish(self) -> None:
        self._pumping.join(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log is not None:
            self.stderr = self.log.read_text()

    def published(self, to: str = "local") -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [e for e in map(json.loads, self.out.read_text().splitlines()) if e["to"] == to]


class Core:
    """``<root>/greengrass/v2``: code under packages/artifacts-unarchived/<component>/<version>/,
    processes started in work/<component>/, as the nucleus lays them out."""

    def __init__(self, root: Path) -> None:
        self.root = root / "greengrass" / "v2"
        self.started: list[Function] = []

    def install(self, recipe: Recipe, zip_path: Path, **env: str) -> Function:
        code = self.root / "packages" / "artifacts-unarchived" / recipe.name / recipe.version / "lambda-artifact"
        code.mkdir(parents=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(code)
        work = self.root / "work" / recipe.name
        work.mkdir(parents=True)
        (self.root / "logs").mkdir(exist_ok=True)
        full = nucleus_env(self.root, recipe)
        if "TELEMETRY_SPOOL" in full:  # the recipe names the core's work folder; this core's is here
            full["TELEMETRY_SPOOL"] = str(work / "spool.db")
        full.update(env)
        function = Function(recipe, code, work, full, self.root / "logs" / f"{recipe.name}.published.jsonl")
        self.started.append(function)
        return function


def events_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    """What the nucleus delivers to a function: the local publishes on its event sources, in order."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as out:
        for e in entries:
            out.write(json.dumps({k: v for k, v in e.items() if k in ("binary", "json")}) + "\n")
    partial.rename(path)  # at once: a function waiting for it never reads half of it
    return path


def iot_payload(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["payload"])
