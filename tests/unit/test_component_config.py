"""The vehicle configuration read from the component's Greengrass configuration (IPC
get_configuration), answered with the SDK's own response class; the bundled one otherwise."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
from awsiot.greengrasscoreipc.model import GetConfigurationResponse, UnauthorizedError

from telemetry.edge.component_config import config_from_component, from_json
from telemetry.edge.config import VehicleConfig, load_config
from telemetry.edge.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "vehicles" / "sample"
BUNDLED = VehicleConfig(vehicle="bundled")


class Ipc:
    """An in-memory stand-in for GreengrassCoreIPCClientV2.get_configuration."""

    def __init__(self, configuration: dict | None = None, error: Exception | None = None) -> None:
        self.configuration = configuration or {}
        self.error = error
        self.asked: list[tuple] = []

    def get_configuration(self, *, component_name=None, key_path=None):
        self.asked.append((component_name, key_path))
        if self.error:
            raise self.error
        return GetConfigurationResponse(component_name=component_name or "me", value=self.configuration)


def as_greengrass_keeps_it(data: dict) -> dict:
    """JSON, with every whole number written as a float (as the nucleus may hand it back)."""
    def floats(v):
        if isinstance(v, bool) or not isinstance(v, (int, float, dict, list)):
            return v
        if isinstance(v, dict):
            return {k: floats(x) for k, x in v.items()}
        if isinstance(v, list):
            return [floats(x) for x in v]
        return float(v)
    return json.loads(json.dumps(floats(data)))


def test_the_deployments_configuration_reads_as_the_toml_file_does():
    toml = tomllib.loads((SAMPLE / "vehicle.toml").read_text())
    ipc = Ipc({"lambdaExecutionParameters": {}, "vehicle": as_greengrass_keeps_it(toml)})
    got = config_from_component(ipc, BUNDLED, base=SAMPLE)
    # the same in every setting, rule and DBC path; only where it came from differs
    assert got == dataclasses.replace(load_config(SAMPLE / "vehicle.toml"), path="component configuration 'vehicle'")
    assert ipc.asked == [(None, [])]


def test_without_a_vehicle_key_or_without_ipc_the_bundled_configuration_is_used(caplog):
    assert config_from_component(Ipc({"accessControl": {}}), BUNDLED, base=SAMPLE) is BUNDLED
    failing = Ipc(error=UnauthorizedError(message="not authorised"))
    assert config_from_component(failing, BUNDLED, base=SAMPLE) is BUNDLED
    assert "UnauthorizedError" in caplog.text


def test_a_bad_deployed_configuration_is_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="component configuration 'vehicle': unknown key"):
        config_from_component(Ipc({"vehicle": {"vehicle": "car", "typo": 1}}), BUNDLED, base=SAMPLE)
    with pytest.raises(ConfigError, match="must be a non-empty object"):
        config_from_component(Ipc({"vehicle": "car"}), BUNDLED, base=SAMPLE)


def test_whole_floats_become_integers_and_others_stay():
    assert from_json({"a": [5.0, 0.5, True, "x", float("inf")]}) == {"a": [5, 0.5, True, "x", float("inf")]}
