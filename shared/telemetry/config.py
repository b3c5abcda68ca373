"""The vehicle configuration: one TOML file per vehicle, documented in docs/CONFIG.md.

Paths in it (DBC files, a log to replay) are relative to the file. Unknown keys are errors: a
misspelt limit that is silently ignored is worse than a refused file. An explicit argument beats
the environment, which beats the file, which beats the default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class ReaderConfig:
    batch_max_frames: int = 2000
    batch_max_seconds: float = 0.5
    log: str | None = None  # replay this log instead of reading a live bus
    replay_speed: float = 0.0  # 0: as fast as possible; 1: recorded pace
    interface: str = "socketcan"
    channel: str = "can0"
    bitrate: int | None = None


@dataclass(frozen=True)
class AggregatorConfig:
    window_seconds: float = 1.0


@dataclass(frozen=True)
class UploaderConfig:
    topic_prefix: str = "dt/{vehicle}"


@dataclass(frozen=True)
class LimitRule:
    name: str
    signals: str  # fnmatch pattern over "<Message>.<Signal>"
    min: float | None = None
    max: float | None = None
    severity: str = "warning"
    kind: str = "limit"


@dataclass(frozen=True)
class VehicleConfig:
    vehicle: str
    dbc: tuple[str, ...] = ()
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    uploader: UploaderConfig = field(default_factory=UploaderConfig)
    rules: tuple[LimitRule, ...] = ()
    path: str | None = None

    @property
    def cloud_prefix(self) -> str:
        return self.uploader.topic_prefix.format(vehicle=self.vehicle).rstrip("/")


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _positive(value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: must be a positive number, not {value!r}")


def parse_config(data: Mapping[str, Any], *, base: Path | None = None, source: str = "<config>") -> VehicleConfig:
    base = base or Path(".")
    data = dict(data)
    top_known = {"vehicle", "dbc", "reader", "aggregator", "uploader", "rules"}
    unknown = sorted(set(data) - top_known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    vehicle = data.get("vehicle")
    if not isinstance(vehicle, str) or not vehicle or any(c in vehicle for c in "/#+"):
        raise ConfigError(f"{source}: 'vehicle' must be a non-empty name without '/', '#' or '+'")
    dbc = data.get("dbc", [])
    if isinstance(dbc, str):
        dbc = [dbc]
    if not isinstance(dbc, list) or not all(isinstance(p, str) for p in dbc):
        raise ConfigError(f"{source}: 'dbc' must be a list of paths")
    reader = _section(ReaderConfig, data.get("reader", {}), f"{source} [reader]")
    if reader.log is not None:
        reader = ReaderConfig(**{**reader.__dict__, "log": str(base / reader.log)})
    _positive(reader.batch_max_frames, f"{source} [reader] batch_max_frames")
    _positive(reader.batch_max_seconds, f"{source} [reader] batch_max_seconds")
    aggregator = _section(AggregatorConfig, data.get("aggregator", {}), f"{source} [aggregator]")
    _positive(aggregator.window_seconds, f"{source} [aggregator] window_seconds")
    uploader = _section(UploaderConfig, data.get("uploader", {}), f"{source} [uploader]")
    rules = []
    names = set()
    for i, raw in enumerate(data.get("rules", [])):
        where = f"{source} [[rules]] #{i + 1}"
        rule = _section(LimitRule, raw, where)
        if rule.kind != "limit":
            raise ConfigError(f"{where}: unknown rule kind {rule.kind!r} (known: limit)")
        if rule.min is None and rule.max is None:
            raise ConfigError(f"{where}: a limit rule needs 'min', 'max' or both")
        if rule.min is not None and rule.max is not None and rule.min >= rule.max:
            raise ConfigError(f"{where}: min {rule.min} is not below max {rule.max}")
        if rule.severity not in SEVERITIES:
            raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        if rule.name in names:
            raise ConfigError(f"{where}: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return VehicleConfig(
        vehicle=vehicle,
        dbc=tuple(str(base / p) for p in dbc),
        reader=reader,
        aggregator=aggregator,
        uploader=uploader,
        rules=tuple(rules),
        path=source,
    )


def load_config(path: str | Path) -> VehicleConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, base=path.parent, source=str(path))
