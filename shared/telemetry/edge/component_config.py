"""The vehicle configuration as Greengrass component configuration: the reading side.

A deployment can carry the vehicle configuration in each component's configuration (its
``configurationUpdate`` merge), under the key ``vehicle``: the TOML file's tables as JSON, with
``dbc`` naming files of the artefact. A component asks for it over IPC (``get_configuration``) and
falls back to the configuration bundled in its zip when the deployment carries none, so a
threshold change needs no new zip (``Services.greengrass`` reads it at start). While it runs,
``ConfigurationWatcher`` follows the updates (IPC ``subscribe_to_configuration_update``) and
applies what is safe to apply live (``LIVE``; docs/CONFIG.md, "Tuning a deployed car").

Greengrass keeps configuration as JSON, where a whole number may come back as ``5.0``:
``from_json`` gives such numbers back as integers (every float setting takes an integer too),
so a value reads the same as it did in the TOML file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import VehicleConfig, parse_config
from .detector import Detector
from .errors import ConfigError
from .reader import LimitCheck
from .uploader import Uploader

LOG = logging.getLogger(__name__)

CONFIG_KEY = "vehicle"


class ConfigurationClient(Protocol):
    """What this needs of ``GreengrassCoreIPCClientV2``."""

    def get_configuration(self, *, component_name: str | None = None, key_path: list[str] | None = None) -> Any: ...


def from_json(value: Any) -> Any:
    """Configuration as Greengrass hands it back: whole floats as integers, recursively."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def config_from_component(client: ConfigurationClient, bundled: VehicleConfig, *, base: Path,
                          component_name: str | None = None) -> VehicleConfig:
    """The deployment's vehicle configuration if it carries one (checked as a file would be, DBC
    paths relative to ``base``), else ``bundled``. A configuration that does not check is refused
    with a ``ConfigError`` naming the key; an IPC failure (no authorisation, no nucleus) is
    logged and the bundled configuration used."""
    try:
        # the whole configuration (an empty key path, as documented), then its key: the answer
        # for a key path is the value there, whose shape a leaf and an object do not share
        response = client.get_configuration(component_name=component_name, key_path=[])
    except Exception as exc:  # the SDK's own errors (UnauthorizedError, ResourceNotFoundError, ...)
        LOG.warning("no component configuration (%s: %s); using the bundled configuration", type(exc).__name__, exc)
        return bundled
    whole = getattr(response, "value", None)
    value = whole.get(CONFIG_KEY) if isinstance(whole, dict) else None
    if value is None:
        return bundled
    return checked(value, base)


def checked(value: Any, base: Path) -> VehicleConfig:
    """The ``vehicle`` key's value as a configuration, checked as a file is (DBC paths relative
    to ``base``); a ``ConfigError`` naming the key if it does not check."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"component configuration '{CONFIG_KEY}' must be a non-empty object, not {value!r:.40}")
    return parse_config(from_json(value), base=base, source=f"component configuration '{CONFIG_KEY}'")


# -- live updates ------------------------------------------------------------------------------------
#
# A deployment that changes only the configuration reaches a running component as
# SubscribeToConfigurationUpdate events. What each component can take without a restart is listed
# here (docs/CONFIG.md, "Tuning a deployed car"); every other change of a key the component uses is
# reported (log, and the status on the health topic) and takes effect when the component next
# starts. Keys are dotted: ``uploader.budget_bytes_per_hour``, ``rules.cell-overtemp``.

# What every component applies live: how often it reports its status.
LIVE_EVERYWHERE = ("uploader.health_seconds",)
# What each component uses of the configuration, and of that what it applies live (prefixes).
USES: dict[str, tuple[str, ...]] = {
    "CanReaderComponent": ("vehicle", "dbc", "reader.", "rules.", "uploader.topic_prefix"),
    "AggregatorComponent": ("vehicle", "dbc", "aggregator.", "uploader.max_payload_bytes", "uploader.topic_prefix"),
    "AnomalyDetectorComponent": ("vehicle", "rules.", "detector.", "uploader.topic_prefix"),
    "UploaderComponent": ("vehicle", "dbc", "uploader."),
}
LIVE: dict[str, tuple[str, ...]] = {
    "CanReaderComponent": ("rules.",),  # its limit check (a live batch goes out when a limit is crossed)
    "AnomalyDetectorComponent": ("rules.", "detector."),
    "UploaderComponent": ("uploader.budget_bytes_per_hour", "uploader.budget_exempt_alerts",
                          "uploader.max_publishes_per_second", "uploader.max_bytes_per_second",
                          "uploader.retry_min_seconds", "uploader.retry_max_seconds", "uploader.max_drops",
                          "uploader.poll_seconds", "uploader.spool_max_bytes", "uploader.evict_alerts"),
}


def flatten(cfg: VehicleConfig) -> dict[str, Any]:
    """The configuration as dotted keys: one per setting, one per rule (by name)."""
    out: dict[str, Any] = {"vehicle": cfg.vehicle, "dbc": cfg.dbc}
    for section in ("reader", "aggregator", "uploader", "detector"):
        for f in dataclasses.fields(getattr(cfg, section)):
            out[f"{section}.{f.name}"] = getattr(getattr(cfg, section), f.name)
    for rule in cfg.rules:
        out[f"rules.{rule.name}"] = rule
    return out


def changed_keys(old: VehicleConfig, new: VehicleConfig) -> list[str]:
    """The dotted keys whose values differ (a rule added or removed counts as changed)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


@dataclass(frozen=True)
class Change:
    """What an update means for one component: the keys it applies now, the keys that need a
    restart, and the keys it does not use (which other components apply)."""

    live: tuple[str, ...]
    restart: tuple[str, ...]
    unused: tuple[str, ...]


def classify(component: str, keys: list[str]) -> Change:
    uses = USES.get(component, ("",))
    live = LIVE.get(component, ()) + LIVE_EVERYWHERE
    used = [k for k in keys if _matches(k, uses) or _matches(k, LIVE_EVERYWHERE) or uses == ("",)]
    return Change(tuple(k for k in used if _matches(k, live)), tuple(k for k in used if not _matches(k, live)),
                  tuple(k for k in keys if k not in used))


def retune(component: Any, old: VehicleConfig, new: VehicleConfig, change: Change) -> VehicleConfig:
    """Apply the live part of ``change`` to a running component; the configuration now in effect
    (the old one with the live keys of the new one). Each core's settings are replaced by
    attribute assignment, so a message being handled meanwhile sees the old or the new, whole."""
    cfg = old
    live = set(change.live)
    if "uploader.health_seconds" in live and hasattr(component, "status"):
        component.status.interval = new.uploader.health_seconds
    uploader_keys = {k.split(".", 1)[1] for k in live if k.startswith("uploader.")}
    if uploader_keys:
        cfg = dataclasses.replace(cfg, uploader=dataclasses.replace(
            cfg.uploader, **{k: getattr(new.uploader, k) for k in uploader_keys}))
    if isinstance(getattr(component, "limits", None), LimitCheck) and any(k.startswith("rules.") for k in live):
        component.limits = LimitCheck(new.rules)
        cfg = dataclasses.replace(cfg, rules=new.rules)
    core = getattr(component, "core", None)
    if isinstance(core, Detector) and any(k.startswith(("rules.", "detector.")) for k in live):
        core.retune(new.rules, new.detector)
        cfg = dataclasses.replace(cfg, rules=new.rules, detector=new.detector)
    if isinstance(core, Uploader) and uploader_keys:
        core.sender.retune(cfg.uploader)
        core.cfg = cfg.uploader
    return cfg


class ConfigurationWatcher:
    """Follows the component's configuration on a core. A deployment's proposed configuration is
    validated first (IPC ``subscribe_to_validate_configuration_updates``): one that does not check
    is REJECTED with its reason, so the deployment fails and nothing changes. Then, on an update
    of the ``vehicle`` key (``subscribe_to_configuration_update``), it reads the configuration
    again, checks it as a file is checked, and applies what ``classify`` says is live. A
    configuration that still does not check (one written past the validation: its timeout, a
    local change) is refused: the old one stays in effect, the refusal is counted and logged
    with its reason, and the status says so. Keys that need a restart are logged and named in the status
    (``restart_needed``), never silently ignored.

    A deployment changes many keys at once, and the nucleus sends an event per key: events that
    arrive while one is being handled, or within ``settle_seconds`` of it, are handled as one."""

    def __init__(self, client: Any, component: Any, services: Any, *, base: Path, settle_seconds: float = 1.0) -> None:
        self.client, self.component, self.services, self.base = client, component, services, base
        self.name = type(component).__name__
        self.settle = settle_seconds
        self.counts = {"config_updates": 0, "config_applied": 0, "config_refused": 0, "config_restart_needed": 0,
                       "config_rejected": 0}
        self.restart_needed: tuple[str, ...] = ()
        self.received: VehicleConfig = services.config  # the last configuration read that checked
        self.last_error = ""
        self.handled = threading.Event()  # set after each update is handled (for whoever waits on one)
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.operation: Any = None
        self.validation: Any = None

    def start(self) -> bool:
        """Subscribe to the updates, and to the validation of a deployment's configuration before
        the nucleus applies it; False (logged) when the nucleus refuses the updates: the
        component runs on with the configuration it started with."""
        try:
            _, self.validation = self.client.subscribe_to_validate_configuration_updates(
                on_stream_event=self.on_validate, on_stream_error=self.on_error)
        except Exception as exc:  # the SDK's own errors: updates are still checked when they come
            LOG.warning("%s: deployments' configurations not validated (%s: %s)", self.name, type(exc).__name__, exc)
        try:
            _, self.operation = self.client.subscribe_to_configuration_update(
                key_path=[CONFIG_KEY], on_stream_event=self.on_event, on_stream_error=self.on_error)
        except Exception as exc:  # the SDK's own errors
            LOG.warning("%s: configuration updates not followed (%s: %s); a change needs a restart",
                        self.name, type(exc).__name__, exc)
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        for stream in (self.validation, self.operation):
            if stream is not None:
                try:
                    stream.close()
                except Exception as exc:  # closing a stream the nucleus already closed
                    LOG.debug("closing a configuration stream: %s", exc)

    def on_validate(self, event: Any) -> None:
        """A deployment proposes a configuration: its ``vehicle`` is checked as a file is, and the
        nucleus told ACCEPTED or REJECTED with the reason (a rejected deployment fails, and rolls
        back, before anything changes on the device)."""
        from awsiot.greengrasscoreipc.model import ConfigurationValidityReport, ConfigurationValidityStatus

        proposed = getattr(event, "validate_configuration_update_event", None)
        configuration = getattr(proposed, "configuration", None) or {}
        value = configuration.get(CONFIG_KEY) if isinstance(configuration, dict) else None
        status, message = ConfigurationValidityStatus.ACCEPTED, ""
        if value is not None:
            try:
                cfg = checked(value, self.base)
                missing = [p for p in cfg.dbc if not Path(p).is_file()]
                if missing:  # DBC files travel in the zip: a new one is new code, deployed with it
                    raise ConfigError(f"component configuration '{CONFIG_KEY}': DBC file(s) "
                                      f"{', '.join(Path(p).name for p in missing)} not in the component's artefact")
            except ConfigError as exc:
                status, message = ConfigurationValidityStatus.REJECTED, str(exc)[:1000]
                self.counts["config_rejected"] += 1
                LOG.error("%s: deployment %s rejected: %s", self.name, getattr(proposed, "deployment_id", "?"), exc)
        try:
            self.client.send_configuration_validity_report(configuration_validity_report=ConfigurationValidityReport(
                status=status, deployment_id=getattr(proposed, "deployment_id", None), message=message or None))
        except Exception as exc:  # the nucleus proceeds after its validation timeout; the update is checked again
            LOG.warning("%s: validity report not sent: %s: %s", self.name, type(exc).__name__, exc)

    def on_error(self, error: Exception) -> bool:
        LOG.warning("%s: configuration update stream: %s: %s", self.name, type(error).__name__, error)
        return False  # keep the stream open

    def on_event(self, event: Any) -> None:
        update = getattr(event, "configuration_update_event", None)
        key_path = list(getattr(update, "key_path", None) or [])
        if key_path and key_path[0] != CONFIG_KEY:
            return
        self._pending.set()
        with self._lock:  # one update at a time; the events that came meanwhile are read with it
            if not self._pending.is_set():
                return
            if self.settle > 0:
                self._stop.wait(self.settle)
            self._pending.clear()
            self.reload()
        self.handled.set()

    def reload(self) -> Change | None:
        """Read, check and apply the configuration now; the change, or None when refused or when
        nothing changed since the last one read."""
        old = self.services.config
        try:
            new = config_from_component(self.client, old, base=self.base)
        except ConfigError as exc:
            self.counts["config_updates"] += 1
            self.counts["config_refused"] += 1
            self.last_error = str(exc)
            LOG.error("%s: configuration update refused, the previous one stays in effect: %s", self.name, exc)
            self._report("config_refused", f"configuration update refused: {exc}")
            return None
        if new == self.received:  # another event of an update already read
            return None
        change = classify(self.name, changed_keys(self.received, new))
        self.received = new
        self.counts["config_updates"] += 1
        effective = retune(self.component, old, new, change)  # no live key: old, as it was
        self.services.config = effective
        self.counts["config_applied"] += 1
        if change.live:
            LOG.info("%s: configuration applied live: %s", self.name, ", ".join(change.live))
        pending = tuple(sorted(set(self.restart_needed) | set(change.restart)))
        if change.restart:
            self.counts["config_restart_needed"] += 1
            LOG.warning("%s: configuration changed for %s: not applied live, takes effect when the component "
                        "restarts (greengrass-cli component restart --names <component>)", self.name,
                        ", ".join(change.restart))
        self.restart_needed = pending
        if change.live or change.restart:
            self._report("restart_needed" if pending else "running",
                         f"configuration: restart needed for {', '.join(pending)}" if pending
                         else f"configuration applied live: {', '.join(change.live)}")
        return change

    def _report(self, state: str, detail: str) -> None:
        status = getattr(self.component, "status", None)
        if status is None:
            return
        try:
            status.report(state, dict(self.counts), detail, force=True)
        except Exception as exc:  # best effort, as every status
            LOG.warning("%s: status not sent: %s", self.name, exc)


def watch(client: Any, component: Any, services: Any, *, base: Path, settle_seconds: float = 1.0) -> ConfigurationWatcher:
    """Start following the component's configuration (see ``ConfigurationWatcher``)."""
    watcher = ConfigurationWatcher(client, component, services, base=base, settle_seconds=settle_seconds)
    watcher.start()
    return watcher
