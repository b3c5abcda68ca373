"""The deferral of python-can's asammdf import (``telemetry/edge/lazymf4.py``), on stand-in packages
shaped like python-can's ``can/io/mf4.py``: deferred while the module keeps its shape, and loaded
eagerly, as python-can would load it, when it does not."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

from telemetry.edge import lazymf4

_names = itertools.count()

# python-can's shape: the optional import in a try block, None in the except branch, classes that
# refuse to be built without it, methods that read the module's globals.
OPTIONAL = """
    try:
        import {dep}
        from {dep} import Thing
        SIZE = {dep}.SIZE * 2
    except ImportError:
        {dep} = None
        Thing = None

    class Reader:
        def __init__(self, n):
            if {dep} is None:
                raise NotImplementedError("{dep} was not found")
            self.n = n

        def read(self):
            return Thing(self.n), SIZE

    class Writer(Reader):
        def __init__(self, n):
            super().__init__(n)
"""
REQUIRED = """
    import {dep}
    from {dep} import Thing

    class Reader:
        def __init__(self, n):
            self.thing = Thing(n)

    class Writer(Reader):
        pass
"""
LAZY_ITSELF = """
    class Reader:
        def __init__(self, n):
            import {dep}
            self.thing = {dep}.Thing(n)

    class Writer(Reader):
        def __init__(self, n):
            super().__init__(n)
"""


def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, *, with_dep: bool = True) -> tuple[str, str]:
    """A package ``fakeN`` with ``fakeN.io.mf4`` holding ``body``, and (``with_dep``) a module ``depN``;
    a finder for them installed first on ``sys.meta_path`` (both removed after the test)."""
    n = next(_names)
    pkg, dep = f"fakecan{n}", f"fakedep{n}"
    (tmp_path / pkg / "io").mkdir(parents=True)
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "io" / "__init__.py").write_text("from .mf4 import Reader, Writer\n")
    (tmp_path / pkg / "io" / "mf4.py").write_text(textwrap.dedent(body.format(dep=dep)))
    if with_dep:
        (tmp_path / f"{dep}.py").write_text("SIZE = 21\nclass Thing:\n    def __init__(self, n):\n        self.n = n\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    lazymf4.install(lazymf4._Finder(f"{pkg}.io.mf4", dep, ("Reader", "Writer")))
    importlib.invalidate_caches()
    return pkg, dep


def test_a_module_of_python_cans_shape_loads_without_its_optional_import_until_a_class_is_built(tmp_path, monkeypatch):
    pkg, dep = make(tmp_path, monkeypatch, OPTIONAL)
    io = importlib.import_module(f"{pkg}.io")
    module = sys.modules[f"{pkg}.io.mf4"]
    reader_class = io.Reader
    # the module is its own file's, with its own classes, and the dependency is not loaded
    assert module.__file__ == str(tmp_path / pkg / "io" / "mf4.py")
    assert dep not in sys.modules and module.__dict__[dep] is None and "SIZE" not in vars(module)
    # building a class loads it, fills the names the module had left unset, and the class works
    writer = io.Writer(3)
    assert dep in sys.modules and vars(module)[dep] is sys.modules[dep]
    thing, size = writer.read()
    assert (type(thing).__module__, thing.n, size) == (dep, 3, 42)
    # the classes are the same objects, unwrapped (the next build runs the module's own __init__)
    assert io.Reader is reader_class and issubclass(io.Writer, reader_class)
    assert "__wrapped__" not in vars(vars(io.Reader)["__init__"]) and "__wrapped__" not in vars(vars(io.Writer)["__init__"])
    assert io.Reader(5).read()[0].n == 5


def test_a_module_that_requires_its_import_is_loaded_eagerly(tmp_path, monkeypatch):
    pkg, dep = make(tmp_path, monkeypatch, REQUIRED)
    io = importlib.import_module(f"{pkg}.io")
    assert dep in sys.modules and io.Reader(4).thing.n == 4
    assert "__wrapped__" not in vars(vars(io.Reader)["__init__"])


def test_a_module_of_another_shape_is_loaded_as_it_is(tmp_path, monkeypatch):
    # python-can made lazy by itself: no global of the dependency's name: left as it is
    pkg, dep = make(tmp_path, monkeypatch, LAZY_ITSELF)
    io = importlib.import_module(f"{pkg}.io")
    assert dep not in sys.modules and "__wrapped__" not in vars(vars(io.Reader)["__init__"])
    assert io.Writer(6).thing.n == 6 and dep in sys.modules


def test_a_missing_dependency_is_the_modules_own_error(tmp_path, monkeypatch):
    # the core device: asammdf is not installed; python-can's own branch, and its own error
    pkg, dep = make(tmp_path, monkeypatch, OPTIONAL, with_dep=False)
    io = importlib.import_module(f"{pkg}.io")
    assert "__wrapped__" not in vars(vars(io.Reader)["__init__"])
    with pytest.raises(NotImplementedError, match=f"{dep} was not found"):
        io.Reader(1)


def test_a_dependency_imported_first_is_used_at_once(tmp_path, monkeypatch):
    pkg, dep = make(tmp_path, monkeypatch, OPTIONAL)
    already = importlib.import_module(dep)
    io = importlib.import_module(f"{pkg}.io")
    assert vars(sys.modules[f"{pkg}.io.mf4"])[dep] is already and "__wrapped__" not in vars(vars(io.Reader)["__init__"])


def test_the_package_defers_python_cans_mf4_module():
    # the finder is in place in this process (installed by telemetry/__init__.py), for can.io.mf4
    finders = [f for f in sys.meta_path if isinstance(f, lazymf4._Finder)]
    assert [(f.module, f.deferred, f.classes) for f in finders] == [("can.io.mf4", "asammdf", ("MF4Reader", "MF4Writer"))]
