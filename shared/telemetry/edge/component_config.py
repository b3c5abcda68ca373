"""The vehicle configuration as Greengrass component configuration: the reading side.

A deployment can carry the vehicle configuration in each component's configuration (its
``configurationUpdate`` merge), under the key ``vehicle``: the TOML file's tables as JSON, with
``dbc`` naming files of the artefact. A component asks for it over IPC (``get_configuration``) and
falls back to the configuration bundled in its zip when the deployment carries none, so a
threshold change needs no new zip. Not wired into the components yet (see the report of issue 13):
this module is the reading and checking, ``parse_config`` does the rest, as for a file.

Greengrass keeps configuration as JSON, where a whole number may come back as ``5.0``:
``from_json`` gives such numbers back as integers (every float setting takes an integer too),
so a value reads the same as it did in the TOML file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

from .config import VehicleConfig, parse_config
from .errors import ConfigError

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
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"component configuration '{CONFIG_KEY}' must be a non-empty object, not {value!r:.40}")
    return parse_config(from_json(value), base=base, source=f"component configuration '{CONFIG_KEY}'")
