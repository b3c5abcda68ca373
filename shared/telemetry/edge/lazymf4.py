"""python-can's .mf4 support, loaded when an .mf4 file is read or written, not when ``can`` is imported.

``import cantools`` imports python-can (``cantools.tester``), and python-can's ``can/io/mf4.py``
imports asammdf, and with it pandas, as soon as ``can`` is imported, when they are installed (a
laptop: requirements.txt has asammdf for replaying .mf4 logs; the core device does not,
requirements-lambda.txt). That is about 0.9 s and tens of MB in every process here (the CLI,
the forkserver of ``--processes`` and each component it forks, every test), four times that on
a Raspberry Pi class CPU, for a format few logs are in.

``install()`` (called by ``telemetry/__init__.py``, so before anything of ours imports python-can)
puts a finder on ``sys.meta_path`` for the one module ``can.io.mf4``. python-can's module is
still the one that loads, from its own file by its own loader, with its own ``MF4Reader`` and
``MF4Writer`` classes (``can.LogReader``, ``can.Logger`` and ``MESSAGE_READERS`` keep using them),
but while it runs, ``asammdf`` is marked absent in ``sys.modules``: python-can takes its own
"asammdf is not installed" branch (``asammdf = MDF4 = Signal = None``). The first
``MF4Reader(...)`` or ``MF4Writer(...)`` then runs the module's code once more in a scratch
namespace, with asammdf importable, and gives python-can's module every name it had left unset
(asammdf, MDF, Signal, numpy, the record dtypes...); the classes' methods read those globals when
they run, so from then on the module is exactly what an eager import would have made.

Why this and not something else: python-can offers no switch (its readers and writers are
registered by importing every format module from ``can/io/__init__.py``); a stand-in module or
proxy classes would change the classes that ``issubclass``/``isinstance`` checks and python-can's
own ``LogReader`` see; ``importlib.util.LazyLoader`` on asammdf does not help, since
``from asammdf import Signal`` loads it at once; editing site-packages is not ours to do. This
finder touches one module by name, changes none of its code, and names none of its globals.

How it fails safe if python-can changes: nothing here is required for correctness, only for
start-up time. If the module moves or is renamed, the finder never matches and python-can loads
as it always did. If its import no longer survives a missing asammdf (an ImportError), or no
longer leaves ``asammdf`` as ``None`` and both classes in place, the module is run again as is,
eagerly. If asammdf is not installed, or was imported before us (``can`` imported before
``telemetry``), nothing is deferred. If the completion finds no asammdf, python-can raises its
own "asammdf was not found" error, as it would without this.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

MODULE = "can.io.mf4"
DEFERRED = "asammdf"  # the import python-can's module makes optional (it pulls in pandas)
CLASSES = ("MF4Reader", "MF4Writer")  # building either completes the module
_MISSING = object()
_lock = threading.Lock()
_wrapped: dict[str, list[tuple[type, Any]]] = {}  # a module's classes whose __init__ completes it: the originals


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``module`` with the finders after it, and hands back its spec with our loader, which
    runs it with ``deferred`` marked absent; building one of ``classes`` completes it."""

    def __init__(self, module: str = MODULE, deferred: str = DEFERRED, classes: Sequence[str] = CLASSES) -> None:
        self.module = module
        self.deferred = deferred
        self.classes = tuple(classes)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self.module or sys.modules.get(self.deferred) is not None:
            return None  # not ours, or asammdf is already loaded: nothing to save
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # not a plain source file (a frozen or zipped python-can): left alone
        if self.deferred not in sys.modules and importlib.util.find_spec(self.deferred) is None:
            return None  # not installed (the core device): python-can's own branch, nothing to defer
        spec.loader = _Loader(spec.loader, self.deferred, self.classes)
        return spec


class _Loader(importlib.abc.Loader):
    """python-can's own loader, run with asammdf marked absent; the classes complete the module."""

    def __init__(self, inner: importlib.machinery.SourceFileLoader, deferred: str, classes: tuple[str, ...]) -> None:
        self.inner = inner
        self.deferred = deferred
        self.classes = classes

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        saved = sys.modules.get(self.deferred, _MISSING)
        sys.modules[self.deferred] = None  # type: ignore[assignment]  # ``import asammdf`` raises ImportError
        try:
            self.inner.exec_module(module)
            deferred = True
        except ImportError:  # python-can no longer treats asammdf as optional: load it as it is
            deferred = False
        finally:
            if saved is _MISSING:
                del sys.modules[self.deferred]
            else:
                sys.modules[self.deferred] = saved  # type: ignore[assignment]
        classes = [c for name in self.classes if isinstance(c := getattr(module, name, None), type) and "__init__" in vars(c)]
        if not deferred or vars(module).get(self.deferred, _MISSING) is not None or len(classes) != len(self.classes):
            self.inner.exec_module(module)  # not the module this was written for: eagerly, as python-can would
            return
        for cls in classes:
            _complete_on_init(cls, module, self.inner, self.deferred)


def _complete_on_init(cls: type, module: ModuleType, loader: importlib.machinery.SourceFileLoader, deferred: str) -> None:
    """Wrap ``cls.__init__`` so that the first instance completes the module, then unwrap it."""
    original = cls.__dict__["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        complete(module, loader, deferred)
        original(self, *args, **kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    __init__.__doc__ = original.__doc__
    setattr(cls, "__init__", __init__)  # noqa: B010
    _wrapped.setdefault(module.__name__, []).append((cls, original))


def complete(module: ModuleType, loader: importlib.machinery.SourceFileLoader, deferred: str = DEFERRED) -> None:
    """Import what python-can's module left out (asammdf and what comes with it), once."""
    with _lock:
        if module.__name__ not in _wrapped:
            return  # completed already
        scratch: dict[str, Any] = {
            "__name__": module.__name__, "__package__": module.__package__, "__file__": module.__file__,
            "__spec__": module.__spec__, "__builtins__": __builtins__,
        }
        code = loader.get_code(module.__name__)
        if code is not None:
            exec(code, scratch)  # python-can's own code, as imported
        if scratch.get(deferred) is None:
            return  # asammdf cannot be imported after all: python-can says so when the class is built
        own = vars(module)
        for name, value in scratch.items():
            mine = own.get(name, _MISSING)
            if mine is None or mine is _MISSING:
                own[name] = value
        for cls, original in _wrapped.pop(module.__name__):
            setattr(cls, "__init__", original)  # noqa: B010


def install(finder: _Finder | None = None) -> None:
    """Defer python-can's asammdf import in this process (and the processes forked from it); once."""
    finder = finder or _Finder()
    if not any(isinstance(f, _Finder) and f.module == finder.module for f in sys.meta_path):
        sys.meta_path.insert(0, finder)
