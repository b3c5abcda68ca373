"""The vehicle configuration: one TOML file per vehicle, documented in docs/CONFIG.md.

Paths in it (DBC files, a log to replay) are relative to the file. Unknown keys are errors: a
misspelt limit that is silently ignored is worse than a refused file. An explicit argument beats
the environment, which beats the file, which beats the default.
"""

from __future__ import annotations

import dataclasses
import math
import string
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import wire
from . import messages
from .errors import ConfigError
from .rules import Rule, rule_class


@dataclass(frozen=True)
class ReaderConfig:
    batch_max_frames: int = 8192
    batch_max_seconds: float = 1.0
    # A live bus: the open batch is decoded this often and published at once when a signal
    # crosses a limit rule (the alert's latency), else when full (the CPU per frame).
    limit_check_seconds: float = 0.1
    # A replay as fast as possible batches by these instead: batches that carry real work. The
    # alerts and windows of a replay do not depend on its batches (tested). 40 s of the sample
    # drive (5,700 frames) replays about 1.1-1.3x as fast as 20 s, the detector at 61.5 MB peak
    # (./build.sh memory; 63.6 MB at 60 s, the reader 64.9 MB at 12,288 frames: the 64 MB budget).
    replay_batch_frames: int = 8192
    replay_batch_seconds: float = 40.0
    # Event time (docs/CONFIG.md): a frame further than this from the stream's event time is
    # held, and admitted only if this many frames in a row agree with it (a gap, or a clock
    # reset: a new epoch); else it is quarantined.
    clock_skew_seconds: float = 5.0
    clock_confirm_frames: int = 16
    log: str | None = None  # replay this log instead of reading a live bus
    replay_speed: float = 0.0  # 0: as fast as possible; 1: recorded pace
    interface: str = "socketcan"
    channel: str = "can0"
    bitrate: int | None = None


@dataclass(frozen=True)
class WindowGroup:
    """Signals matching ``signals`` are aggregated in windows of their own length."""

    name: str
    signals: tuple[str, ...]
    window_seconds: float
    stats: tuple[str, ...] = ()  # () : the aggregator's
    publish_seconds: float = 0.0  # 0: the aggregator's


@dataclass(frozen=True)
class AggregatorConfig:
    window_seconds: float = 1.0
    lateness_seconds: float = 0.0  # a window closes this long after its end (in event time)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_open_windows: int = 64  # per group; past it the oldest window is closed early
    groups: tuple[WindowGroup, ...] = ()
    stats: tuple[str, ...] = ("count", "min", "max", "mean")  # what goes on the wire, per group
    publish_seconds: float = 60.0  # one aggregates payload per group per this much event time
    codec: str = "zlib"  # the payload body's compression: zlib or none


@dataclass(frozen=True)
class UploaderConfig:
    topic_prefix: str = "dt/{vehicle}"
    spool_path: str = "spool.db"  # env TELEMETRY_SPOOL; ":memory:" keeps nothing across restarts
    spool_max_bytes: int = 50_000_000  # past this, the oldest aggregates are evicted
    evict_alerts: bool = False  # alerts are never evicted unless this says so
    max_payload_bytes: int = 100_000  # one MQTT publish; AWS IoT Core takes at most 128 KB
    compress: bool = True  # zlib, marked in the bundle ("encoding")
    max_publishes_per_second: float = 50.0  # IoT Core: about 100 per connection
    max_bytes_per_second: float = 400_000.0  # IoT Core: 512 KiB per connection
    budget_bytes_per_hour: int = 0  # 0: no budget
    budget_exempt_alerts: bool = True  # alerts and gap reports still go once the budget is spent
    retry_min_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    max_drops: int = 3  # a message the line drops with this many times is treated as refused
    health_seconds: float = 60.0
    poll_seconds: float = 0.5  # longest an idle sender sleeps before looking again


@dataclass(frozen=True)
class DetectorConfig:
    update_seconds: float = 10.0  # an active alert is re-sent with its worst value at most this often
    flap_raises: int = 3  # this many raises of one alert within flap_window_seconds...
    flap_window_seconds: float = 60.0
    flap_hold_seconds: float = 60.0  # ...and it clears only after this long clean


@dataclass(frozen=True)
class VehicleConfig:
    vehicle: str
    dbc: tuple[str, ...] = ()
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    uploader: UploaderConfig = field(default_factory=UploaderConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    rules: tuple[Rule, ...] = ()
    path: str | None = None

    @property
    def cloud_prefix(self) -> str:
        return self.uploader.topic_prefix.format(vehicle=self.vehicle).rstrip("/")


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        section = cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    check_types(section, where)
    return section


def check_types(section: Any, where: str) -> None:
    """Every key of a section (a dataclass) holds a value of its declared type: a boolean is
    ``true`` or ``false`` (not "no", not 0), a whole number is a whole number, and no number is
    NaN or infinite (TOML writes them ``nan`` and ``inf``)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if typing.get_origin(hints[f.name]) is tuple:
            continue  # patterns and groups: checked where they are read
        allowed = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if value is None and type(None) in allowed:
            continue
        if bool in allowed:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} {f.name}: must be true or false, not {value!r}")
        elif float in allowed:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where} {f.name}: must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{where} {f.name}: must be a finite number, not {value!r}")
        elif int in allowed:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} {f.name}: must be a whole number, not {value!r}")
        elif str in allowed and not isinstance(value, str):
            raise ConfigError(f"{where} {f.name}: must be a string, not {value!r}")


def _positive(value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ConfigError(f"{where}: must be a positive number, not {value!r}")


# The most frames one batch may hold: at the 8 signals a frame of a typical DBC, some 130,000
# samples, which every component processes in a few tens of MB (docs/CONFIG.md, "Bounded batches").
MAX_BATCH_FRAMES = 16_384
# AWS IoT Core: a topic is at most 256 bytes of UTF-8 with at most 7 slashes; '+' and '#' are
# MQTT wildcards, '*' a policy wildcard, and topics starting with '$' are reserved ($aws/...).
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
_FORBIDDEN = ("+", "#", "*", "\0")


def check_vehicle(vehicle: Any, where: str) -> str:
    """A vehicle id is one level of an MQTT topic and of an IoT policy's resource."""
    if not isinstance(vehicle, str) or not vehicle:
        raise ConfigError(f"{where}: 'vehicle' must be a non-empty name")
    bad = [c for c in vehicle if c in "/+#*{}\0" or not c.isprintable() or c.isspace()]
    if bad or vehicle.startswith("$") or len(vehicle.encode()) > 128:
        raise ConfigError(f"{where}: 'vehicle' must be a name of at most 128 bytes without '/', '+', '#', '*', "
                          f"braces, spaces or control characters, not starting with '$' (not {vehicle!r})")
    return vehicle


def check_topic_prefix(prefix: str, vehicle: str, where: str) -> None:
    """The uploader's topics under ``prefix`` are valid IoT Core topics, none of them a wildcard."""
    try:
        fields_used = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(prefix) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: {prefix!r} is not a valid template: {exc}") from None
    for name, spec, conv in fields_used:
        if name != "vehicle" or spec or conv:
            raise ConfigError(f"{where}: {prefix!r}: the only field it may hold is {{vehicle}}")
    topic_root = prefix.format(vehicle=vehicle).rstrip("/")
    for c in _FORBIDDEN:
        if c in topic_root:
            raise ConfigError(f"{where}: {topic_root!r} holds {c!r}: a wildcard or NUL cannot be in a topic")
    if not topic_root or topic_root.startswith("$") or topic_root.startswith("/") or "//" in topic_root:
        raise ConfigError(f"{where}: {topic_root!r} must not be empty, start with '$' (reserved: $aws/...) or '/', "
                          "or have an empty level")
    for kind in messages.KINDS.values():
        if kind.cloud_topic:
            topic = f"{topic_root}/{kind.cloud_topic}"
            if len(topic.encode()) > MAX_TOPIC_BYTES or topic.count("/") > MAX_TOPIC_SLASHES:
                raise ConfigError(f"{where}: topic {topic!r} is over AWS IoT Core's limits ({MAX_TOPIC_BYTES} bytes, "
                                  f"{MAX_TOPIC_SLASHES} slashes)")


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{where}: must be a pattern or a list of patterns")
    return tuple(value)


def _stats(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"{where}: must be a list of statistics ({', '.join(wire.STATISTICS)})")
    unknown = [x for x in value if x not in wire.STATISTICS]
    if unknown:
        raise ConfigError(f"{where}: unknown statistic(s) {', '.join(map(repr, unknown))} (known: {', '.join(wire.STATISTICS)})")
    # count always travels (a window's weight); the order is the canonical one
    return tuple(x for x in wire.STATISTICS if x in value or x == "count")


def _aggregator(data: Any, where: str) -> AggregatorConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    data = dict(data)
    groups_raw = data.pop("groups", [])
    if not isinstance(groups_raw, list):
        raise ConfigError(f"{where} groups: must be a list of [[aggregator.groups]] tables")
    for key in ("include", "exclude"):
        if key in data:
            data[key] = () if data[key] == [] else _patterns(data[key], f"{where} {key}")
    if "stats" in data:
        data["stats"] = _stats(data["stats"], f"{where} stats")
    cfg = _section(AggregatorConfig, data, where)
    _positive(cfg.window_seconds, f"{where} window_seconds")
    _positive(cfg.publish_seconds, f"{where} publish_seconds")
    if cfg.codec not in wire.CODECS:
        raise ConfigError(f"{where} codec: must be one of {', '.join(wire.CODECS)}, not {cfg.codec!r}")
    _positive(cfg.max_open_windows, f"{where} max_open_windows")
    if not isinstance(cfg.lateness_seconds, (int, float)) or cfg.lateness_seconds < 0:
        raise ConfigError(f"{where} lateness_seconds: must be zero or more")
    groups: list[WindowGroup] = []
    for i, raw in enumerate(groups_raw):
        gwhere = f"{where} groups #{i + 1}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{gwhere}: must be a table")
        raw = dict(raw)
        raw.setdefault("window_seconds", cfg.window_seconds)
        if "signals" not in raw or "name" not in raw:
            raise ConfigError(f"{gwhere}: needs 'name' and 'signals'")
        raw["signals"] = _patterns(raw["signals"], f"{gwhere} signals")
        raw["stats"] = _stats(raw.get("stats", list(cfg.stats)), f"{gwhere} stats")
        raw.setdefault("publish_seconds", cfg.publish_seconds)
        group = _section(WindowGroup, raw, gwhere)
        _positive(group.window_seconds, f"{gwhere} window_seconds")
        _positive(group.publish_seconds, f"{gwhere} publish_seconds")
        if group.name in {g.name for g in groups} | {"default"}:
            raise ConfigError(f"{gwhere}: group name {group.name!r} is taken")
        groups.append(group)
    return AggregatorConfig(**{**cfg.__dict__, "groups": tuple(groups)})


def _rule(raw: Any, where: str) -> Rule:
    """One ``[[rules]]`` table: its kind's class says which keys it takes and checks them."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    raw = dict(raw)
    kind = raw.pop("kind", "limit")
    cls = rule_class(kind, where)
    allowed = {f.name for f in fields(cls)} | {"kind"}
    stray = sorted(set(raw) - allowed)
    if stray:
        raise ConfigError(f"{where}: key(s) {', '.join(stray)} do not apply to a {kind} rule (it takes: {', '.join(sorted(allowed))})")
    raw.setdefault("name", "")  # the one key without a default: check() refuses it missing as it does empty
    if "signals" in raw:
        raw["signals"] = _patterns(raw["signals"], f"{where} signals")
    try:
        rule = cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    check_types(rule, where)
    rule.check(where)
    return rule


def parse_config(data: Mapping[str, Any], *, base: Path | None = None, source: str = "<config>") -> VehicleConfig:
    base = base or Path(".")
    data = dict(data)
    top_known = {"vehicle", "dbc", "reader", "aggregator", "uploader", "detector", "rules"}
    unknown = sorted(set(data) - top_known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    vehicle = check_vehicle(data.get("vehicle"), source)
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
    _positive(reader.limit_check_seconds, f"{source} [reader] limit_check_seconds")
    _positive(reader.replay_batch_frames, f"{source} [reader] replay_batch_frames")
    _positive(reader.replay_batch_seconds, f"{source} [reader] replay_batch_seconds")
    _positive(reader.clock_skew_seconds, f"{source} [reader] clock_skew_seconds")
    _positive(reader.clock_confirm_frames, f"{source} [reader] clock_confirm_frames")
    _positive(reader.replay_speed + 1, f"{source} [reader] replay_speed")  # zero or more
    for key in ("batch_max_frames", "replay_batch_frames"):
        if getattr(reader, key) > MAX_BATCH_FRAMES:
            raise ConfigError(f"{source} [reader] {key}: at most {MAX_BATCH_FRAMES} frames a batch (the components' "
                              f"memory limits rest on it; docs/CONFIG.md)")
    aggregator = _aggregator(data.get("aggregator", {}), f"{source} [aggregator]")
    uploader = _section(UploaderConfig, data.get("uploader", {}), f"{source} [uploader]")
    if uploader.spool_path != ":memory:" and not Path(uploader.spool_path).is_absolute():
        uploader = UploaderConfig(**{**uploader.__dict__, "spool_path": str(base / uploader.spool_path)})
    for key in ("spool_max_bytes", "max_payload_bytes", "max_publishes_per_second", "max_bytes_per_second",
                "retry_min_seconds", "retry_max_seconds", "health_seconds", "poll_seconds"):
        _positive(getattr(uploader, key), f"{source} [uploader] {key}")
    if uploader.max_payload_bytes > 131_072:
        raise ConfigError(f"{source} [uploader] max_payload_bytes: AWS IoT Core takes at most 131072 bytes a message")
    check_topic_prefix(uploader.topic_prefix, vehicle, f"{source} [uploader] topic_prefix")
    if uploader.budget_bytes_per_hour < 0:
        raise ConfigError(f"{source} [uploader] budget_bytes_per_hour: must be zero (no budget) or more")
    _positive(uploader.max_drops, f"{source} [uploader] max_drops")
    detector = _section(DetectorConfig, data.get("detector", {}), f"{source} [detector]")
    for key in ("update_seconds", "flap_raises", "flap_window_seconds", "flap_hold_seconds"):
        _positive(getattr(detector, key), f"{source} [detector] {key}")
    rules = []
    names = set()
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{source}: 'rules' must be a list of [[rules]] tables")
    for i, raw in enumerate(rules_raw):
        rule = _rule(raw, f"{source} [[rules]] #{i + 1}")
        if rule.name in names:
            raise ConfigError(f"{source} [[rules]] #{i + 1}: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return VehicleConfig(
        vehicle=vehicle,
        dbc=tuple(str(base / p) for p in dbc),
        reader=reader,
        aggregator=aggregator,
        uploader=uploader,
        detector=detector,
        rules=tuple(rules),
        path=source,
    )


def rules_matching_nothing(rules: Sequence[Rule], matches: Callable[[str], bool]) -> list[str]:
    """The rules none of whose signal patterns matches a signal of the DBC files (``matches``
    answers for one pattern): a misspelt pattern would watch nothing, forever, in silence."""
    out = []
    for rule in rules:
        if rule.kind == "bus":
            continue  # its key is a bus counter, not a signal
        if not any(matches(pattern) for pattern in rule.signals):
            out.append(f"rule {rule.name!r}: signals {', '.join(rule.signals)} match no signal of the DBC files")
    return out


def load_config(path: str | Path) -> VehicleConfig:
    path = Path(path)
    return parse_config(read_config_data(path), base=path.parent, source=str(path))


def read_config_data(path: Path) -> dict[str, Any]:
    """A configuration file's TOML tables, unchecked (``load_config`` checks them)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # an editor's byte-order mark is no part of it
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return data
