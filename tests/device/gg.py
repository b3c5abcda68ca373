"""A Greengrass core's layout in a temporary folder, and its functions started as the nucleus
starts them (``core.py`` is the process each runs)."""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
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

    def start(self, events: Path | None = None, **extra: Any) -> None:
        spec = {"code": str(self.code), "handler": self.recipe.function["Handler"], "out": str(self.out),
                "function": self.recipe.function["FunctionName"], "binary_input": self.recipe.binary_input,
                "events": str(events) if events else None, **extra}
        spec_path = self.work.parent / f"{self.recipe.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        # -I -S: the interpreter of the core, without this machine's site-packages
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(DRIVER), str(spec_path)], cwd=self.work,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, word: str, timeout: float = 120.0) -> None:
        """Read the process's output until a line says ``word``; fail with its stderr if it ends first."""
        assert self.proc is not None and self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip())
                if line.strip() == word:
                    return
        self.proc.kill()
        _, self.stderr = self.proc.communicate()
        raise AssertionError(f"{self.recipe.name} never said {word!r} (exit status {self.proc.returncode}):\n"
                             + "\n".join(self.lines) + "\n" + self.stderr[-3000:])

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the nucleus stops a component; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
            raise AssertionError(f"{self.recipe.name} did not end within {timeout} s of SIGTERM") from None
        return self.proc.returncode

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
            raise AssertionError(f"{self.recipe.name} still running after {timeout} s") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

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
    with path.open("w") as out:
        for e in entries:
            out.write(json.dumps({k: v for k, v in e.items() if k in ("binary", "json")}) + "\n")
    return path


def iot_payload(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["payload"])
