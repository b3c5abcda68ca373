"""The detector's rule kinds, one module each, and the registry the configuration loader asks.

A kind is one class: a frozen dataclass whose fields are the keys a ``[[rules]]`` table of that
kind takes, a ``check()`` for them, and an ``evaluator()`` that watches the signals. To add a
kind, write one module here (the ``Rule`` subclass and its ``Evaluator``, see ``limit.py``) and
add one line to ``RULES``; then document its keys in docs/CONFIG.md (a test checks they are).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Evaluator, Metric, Metrics, Rule
from .bus import BusRule
from .limit import LimitRule
from .rate import RateRule
from .spread import SpreadRule
from .stale import StaleRule
from .zscore import ZScoreRule

RULES: dict[str, type[Rule]] = {
    "limit": LimitRule,
    "rate": RateRule,
    "stale": StaleRule,
    "spread": SpreadRule,
    "zscore": ZScoreRule,
    "bus": BusRule,
}


def rule_class(kind: Any, where: str) -> type[Rule]:
    """The class of a rule kind as a ``[[rules]]`` table names it."""
    cls = RULES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where}: unknown rule kind {kind!r} (known: {', '.join(RULES)})")
    return cls


__all__ = ["RULES", "BusRule", "Evaluator", "LimitRule", "Metric", "Metrics", "RateRule", "Rule", "SpreadRule",
           "StaleRule", "ZScoreRule", "rule_class"]
