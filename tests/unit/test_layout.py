"""The shape of the package, checked from its import graph: the car's wing never imports the
laptop's, and the cores know nothing of Lambda, Greengrass or the components that wire them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "telemetry"
EDGE = PACKAGE / "edge"
CORES = ["reader.py", "aggregator.py", "detector.py", "uploader.py", "spool.py", "decode.py", "messages.py",
         *sorted(p.relative_to(EDGE).as_posix() for p in (EDGE / "rules").glob("*.py"))]


def imports(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", sorted(EDGE.rglob("*.py")), ids=lambda p: p.relative_to(EDGE).as_posix())
def test_the_edge_never_imports_the_tools(path):
    assert not [n for n in imports(path) if n.startswith("telemetry.tools")]


@pytest.mark.parametrize("name", CORES)
def test_the_cores_know_nothing_of_lambda_or_greengrass(name):
    found = imports(EDGE / name)
    wiring = {"telemetry.edge.components", "awsiot", "greengrasssdk", "awscrt", "os"}
    assert not [n for n in found if n.split(".")[0] in {"awsiot", "greengrasssdk", "awscrt"}
                or any(n == w or n.startswith(w + ".") for w in wiring)]


def test_the_import_graph_sees_relative_imports():
    # the check above would pass vacuously if relative imports were not resolved
    assert "telemetry.edge.messages" in imports(EDGE / "aggregator.py")
    assert "telemetry.edge.components" in imports(EDGE.parent / "tools" / "runtime.py")
