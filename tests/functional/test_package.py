"""Packaging for a Raspberry Pi from this x86_64 machine: native code is aarch64, the zips hold
what a function needs and nothing else, and the same inputs give the same bytes. And a broken
recipe stops a deploy before any request is built."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from telemetry.tools.package import package

ROOT = Path(__file__).resolve().parents[2]
EM_AARCH64, EM_X86_64 = 183, 62


def elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack("<H", data[18:20])[0]


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory):
    first = package("aarch64", out=tmp_path_factory.mktemp("a"))
    second = package("aarch64", out=tmp_path_factory.mktemp("b"))
    return first, second


def test_aarch64_zips_hold_aarch64_native_code(aarch64):
    first, _ = aarch64
    assert len(first) == 4
    for p in first:
        with zipfile.ZipFile(p.path) as zf:
            native = [n for n in zf.namelist() if n.endswith(".so") or ".so." in n]
            assert any(n.startswith("numpy/") for n in native) and "_awscrt.abi3.so" in native
            machines = {elf_machine(zf.read(n)) for n in native}
            assert machines == {EM_AARCH64}, p.path.name
            wheels = [n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")]
            tags = " ".join(zf.read(n).decode() for n in wheels)
            assert "aarch64" in tags and "x86_64" not in tags


def test_the_same_inputs_give_the_same_bytes(aarch64):
    first, second = aarch64
    for a, b in zip(first, second):
        assert a.path.read_bytes() == b.path.read_bytes(), a.path.name
        assert a.sha256 == b.sha256


def test_a_zip_holds_its_handler_the_package_and_the_vehicle_and_nothing_else(aarch64):
    first, _ = aarch64
    reader = next(p for p in first if p.recipe.name == "telemetry.CanReader")
    with zipfile.ZipFile(reader.path) as zf:
        names = zf.namelist()
        assert zf.read("handler.py") == (ROOT / "lambdas/can_reader/handler.py").read_bytes()
        # the car's wing, every module of it, and nothing of the laptop's
        ours = sorted(n for n in names if n.startswith("telemetry/"))
        edge = sorted(p.relative_to(ROOT / "shared").as_posix() for p in (ROOT / "shared/telemetry/edge").rglob("*.py"))
        assert ours == sorted(["telemetry/__init__.py", "telemetry/wire.py", *edge])
        assert "telemetry/edge/reader.py" in ours and not [n for n in names if n.startswith("telemetry/tools")]
        assert "vehicle.toml" in names and "solar_car.dbc" in names
        assert "cantools/__init__.py" in names and "can/__init__.py" in names and "awsiot/__init__.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
        assert not [n for n in names if n.startswith(("pytest", "hypothesis", "botocore", "boto3", "asammdf", "pandas"))]
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in zf.infolist())
        # sorted: the dependencies (compressed once for all four zips), then the function's own files
        own = [n for n in names if n.startswith("telemetry/") or n in ("handler.py", "vehicle.toml", "solar_car.dbc")]
        assert names == sorted(n for n in names if n not in own) + sorted(own)
        assert len(names) == len(set(names))
    assert 5_000_000 < reader.size < 50_000_000  # (Lambda's limit for a zip is 50 MB)


def test_a_broken_recipe_stops_a_deploy_before_any_request(tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "lambdas", tmp_path / "lambdas")
    path = tmp_path / "recipes" / "uploader.json"
    data = json.loads(path.read_text())
    data["lambdaFunction"]["componentLambdaParameters"]["eventSources"].append({"topic": "telemetry/+", "type": "PUB_SUB"})
    data["lambdaFunction"]["componentDependencies"] = {"telemetry.CanReader": {"versionRequirement": ">=1.0.0", "dependencyType": "HARD"}}
    data["function"]["Handler"] = "nothing.function_handler"
    path.write_text(json.dumps(data))
    out = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-m", "telemetry", "deploy", "--thing-group", "cars", "--bucket", "b", "--dry-run",
         "--recipes", str(tmp_path / "recipes"), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid recipes:")
    assert "wildcard" in result.stderr and "dependency cycle" in result.stderr and "nothing.py not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing packaged, no request written
