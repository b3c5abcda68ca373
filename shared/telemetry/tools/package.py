"""Packaging: one deployment zip per Lambda function, for the core device's platform.

Each zip holds the function's handler (at the root, as its recipe's ``Handler`` names it), the
``telemetry`` package, the vehicle configuration with its DBC files, and the runtime
dependencies of ``requirements-lambda.txt`` unpacked from wheels built for the target
(``pip download --platform ... --only-binary=:all:``). No tests, caches, compiled bytecode or
dev tools. The same inputs give the same bytes: entries are sorted (the dependencies, then the
function's own files), dated 1980-01-01 and given fixed permissions.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from telemetry.edge.config import load_config
from telemetry.edge.errors import TelemetryError
from telemetry.tools.paths import RECIPES, REPO, REQUIREMENTS_LAMBDA, SAMPLE
from telemetry.tools.recipes import Recipe, check_recipes, load_recipes

LOG = logging.getLogger(__name__)

PLATFORMS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"],
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"],
}
EPOCH = (1980, 1, 1, 0, 0, 0)
SKIP_PARTS = {"__pycache__", "tests", "test", ".pytest_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class PackageError(TelemetryError):
    pass


@dataclass(frozen=True)
class Package:
    recipe: Recipe
    path: Path
    size: int
    sha256: str


def download_wheels(arch: str, cache: Path, requirements: Path) -> list[Path]:
    """The wheels of requirements-lambda.txt for the target, cached per architecture."""
    if arch not in PLATFORMS:
        raise PackageError(f"unknown architecture {arch!r} (known: {', '.join(PLATFORMS)})")
    folder = cache / arch
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--abi", "abi3", "--abi", "none", "-r", str(requirements), "-d", str(folder)]
        for platform in PLATFORMS[arch]:
            cmd += ["--platform", platform]
        cmd += ["--platform", "any"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise PackageError(f"pip download for {arch} failed:\n{result.stderr.strip()[-2000:]}")
        stamp.write_text(digest)
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise PackageError(f"no wheels in {folder}")
    return wheels


def _add(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.create_system = 3  # unix, so the permissions above are read
    zf.writestr(info, data, compresslevel=6)


def _skip(name: str) -> bool:
    parts = name.split("/")
    return any(p in SKIP_PARTS for p in parts) or name.endswith(SKIP_SUFFIXES) or name.endswith("/")


def _files_of_wheels(wheels: list[Path]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as whl:
            for name in whl.namelist():
                if _skip(name) or name.endswith(".dist-info/RECORD") or "/bin/" in name or ".data/scripts/" in name:
                    continue
                files[name] = whl.read(name)
    return files


def _project_files(recipe: Recipe, config_path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    handler, _ = recipe.handler
    files[handler.relative_to(recipe.code).as_posix()] = handler.read_bytes()
    # Only the car's wing: the package's root module and telemetry.edge. The tools (local
    # runtime, replay, packaging, deployment, CLI) never run on the core device.
    package = REPO / "shared" / "telemetry"
    for path in [package / "__init__.py", package / "wire.py", *sorted((package / "edge").rglob("*.py"))]:
        rel = path.relative_to(package.parent).as_posix()
        if not _skip(rel):
            files[rel] = path.read_bytes()
    cfg = load_config(config_path)
    files["vehicle.toml"] = config_path.read_bytes()
    for dbc in cfg.dbc:
        try:
            rel = Path(dbc).resolve().relative_to(config_path.resolve().parent).as_posix()
        except ValueError:
            raise PackageError(f"{dbc}: a DBC must be in the configuration's folder to be packaged with it") from None
        files[rel] = Path(dbc).read_bytes()
    return files


def package(arch: str = "x86_64", out: str | Path = "build", config: str | Path | None = None,
            recipes_dir: str | Path | None = None, cache: str | Path | None = None) -> list[Package]:
    recipes_dir = Path(recipes_dir or RECIPES)
    config_path = Path(config or SAMPLE / "vehicle.toml")
    out = Path(out)
    recipes = check_recipes(load_recipes(recipes_dir, recipes_dir.resolve().parent))
    wheels = download_wheels(arch, Path(cache or REPO / "build" / "wheels"), REQUIREMENTS_LAMBDA)
    dependencies = _files_of_wheels(wheels)
    ours = {recipe.name: _project_files(recipe, config_path) for recipe in recipes}
    # The dependencies, the bulk of every zip and the same in each, are compressed once; each
    # function's own files are then appended (both parts sorted). A project file wins over a
    # dependency of the same name, as it would unpacked.
    shadowed = {name for files in ours.values() for name in files}
    base = io.BytesIO()
    with zipfile.ZipFile(base, "w") as zf:
        for name in sorted(set(dependencies) - shadowed):
            _add(zf, name, dependencies[name])
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for recipe in recipes:
        files = ours[recipe.name]
        buffer = io.BytesIO(base.getvalue())
        with zipfile.ZipFile(buffer, "a") as zf:
            for name in sorted(files):
                _add(zf, name, files[name])
        data = buffer.getvalue()
        path = out / f"{recipe.function['FunctionName']}-{arch}.zip"
        path.write_bytes(data)
        made.append(Package(recipe, path, len(data), hashlib.sha256(data).hexdigest()))
    return made
