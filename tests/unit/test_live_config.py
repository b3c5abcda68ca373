"""Tuning without rebuilding: on a core, a component takes the vehicle configuration from its
Greengrass component configuration and follows its updates. The SDK runs whole
(GreengrassCoreIPCClientV2 down to awsiot.eventstreamrpc, with the SDK's own model shapes on the
wire); only awscrt's native connection to the nucleus is replaced (support.nucleus)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from support.helpers import columns, signals_event
from support.nucleus import Nucleus
from telemetry.edge import component_config
from telemetry.edge.component_config import LIVE, USES, classify
from telemetry.edge.components import (
    AggregatorComponent,
    AnomalyDetectorComponent,
    LambdaAdapter,
    Services,
    UploaderComponent,
)
from telemetry.edge.config import load_config
from telemetry.tools.deploy import configuration_update
from telemetry.tools.recipes import load_recipes

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
FACTORIES = {"telemetry.AnomalyDetector": AnomalyDetectorComponent, "telemetry.Aggregator": AggregatorComponent,
             "telemetry.Uploader": UploaderComponent}


def sample() -> dict:
    return tomllib.loads((SAMPLE / "vehicle.toml").read_text())


def with_rule(data: dict, name: str, **changes) -> dict:
    data = json.loads(json.dumps(data))
    rule = next(r for r in data["rules"] if r["name"] == name)
    rule.update(changes)
    return data


def deployed(component: str, vehicle: dict) -> dict:
    """The component's configuration after a deploy: what ``deploy`` writes, as the nucleus keeps it."""
    recipe = next(r for r in load_recipes(ROOT / "recipes") if r.name == component)
    merge = json.loads(configuration_update(recipe, load_config(SAMPLE / "vehicle.toml"), vehicle)["merge"])
    return merge


@pytest.fixture
def nucleus():
    with Nucleus() as running:
        yield running


@pytest.fixture
def core(monkeypatch, tmp_path, nucleus):
    """Start a component as the nucleus would: its environment, its deployed configuration."""
    started = []

    def start(component: str, vehicle: dict | None) -> LambdaAdapter:
        factory = FACTORIES[component]
        configuration = deployed(component, vehicle) if vehicle is not None else {
            "accessControl": deployed(component, sample())["accessControl"]}
        env = nucleus.component(component, configuration, token=f"svcuid-{component}")
        for key, value in env.items():
            monkeypatch.setenv(key, value)  # awsiot.greengrasscoreipc.connect() reads them from the process
        recipe = next(r for r in load_recipes(ROOT / "recipes") if r.name == component)
        env = {**env, **recipe.environment, "TELEMETRY_SPOOL": str(tmp_path / "spool.db")}
        # the handler's folder as the zip has it: vehicle.toml and the DBC beside it
        adapter = LambdaAdapter(factory, str(SAMPLE / "handler.py"))
        adapter.host(Services.greengrass(env, base=SAMPLE, name=component))
        adapter.watch_configuration()
        adapter.watcher.settle = 0.0
        nucleus.drain()
        started.append(adapter)
        return adapter

    yield start
    for adapter in started:
        adapter.stop(timeout=5)
        adapter._services.ipc.close()


def update(nucleus: Nucleus, adapter: LambdaAdapter, component: str, vehicle: dict, *, validated: bool = True) -> None:
    """A deploy of ``vehicle`` to the running component (validated by it first, or written past
    the validation); returns once the component has handled the update."""
    adapter.watcher.handled.clear()
    if validated:
        assert nucleus.deploy(component, configuration_update_of(component, vehicle), "d-2") == "SUCCEEDED"
    else:
        nucleus.update(component, configuration_update_of(component, vehicle))
    nucleus.drain()
    assert adapter.watcher.handled.wait(10), "the component did not handle the configuration update"


def configuration_update_of(component: str, vehicle: dict) -> dict:
    recipe = next(r for r in load_recipes(ROOT / "recipes") if r.name == component)
    return configuration_update(recipe, load_config(SAMPLE / "vehicle.toml"), vehicle)


def temps(t: float, value: float, seq: int) -> dict:
    return signals_event(columns(**{"BMS_CellTemps.Temp1": ([t, t + 0.5], [value, value])}), seq=seq)


def test_the_deployments_configuration_wins_over_the_bundled_file_and_dbcs_come_from_the_artefact(nucleus, core):
    adapter = core("telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max=50.0))
    cfg = adapter._services.config
    assert next(r for r in cfg.rules if r.name == "cell-overtemp").max == 50.0  # the bundled file says 55
    assert cfg.dbc == (str(SAMPLE / "solar_car.dbc"),) and cfg.path == "component configuration 'vehicle'"
    # what the component asked of the nucleus: its own whole configuration, then its updates
    assert [(who, op.split("#")[1], body) for who, op, body in nucleus.requests] == [
        ("telemetry.AnomalyDetector", "GetConfiguration", {"keyPath": []}),
        ("telemetry.AnomalyDetector", "SubscribeToValidateConfigurationUpdates", {}),
        ("telemetry.AnomalyDetector", "SubscribeToConfigurationUpdate", {"keyPath": ["vehicle"]})]


def test_without_a_deployed_vehicle_key_the_bundled_file_is_used(nucleus, core):
    adapter = core("telemetry.AnomalyDetector", None)
    assert adapter._services.config == load_config(SAMPLE / "vehicle.toml")


def test_a_threshold_change_applies_live_and_active_alerts_carry_on(nucleus, core):
    adapter = core("telemetry.AnomalyDetector", sample())
    detector = adapter.component
    adapter.handle(temps(10.0, 52.0, 1))  # under 55: nothing
    assert adapter._services.local.__class__.__name__ == "IpcLocalTransport"
    assert detector.core.stats["alerts_raised"] == 0
    update(nucleus, adapter, "telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max=50.0))
    watcher = adapter.watcher
    assert watcher.counts["config_applied"] == 1 and watcher.restart_needed == ()
    assert next(r for r, _ in detector.core.evaluators if r.name == "cell-overtemp").max == 50.0
    adapter.handle(temps(11.0, 52.0, 2))  # the same 52 degC is over the new limit
    assert detector.core.stats["alerts_raised"] == 1
    # the status says what was applied, on the health topic the deploy grants it
    (_, topic, payload), = [p for p in nucleus.published if p[1].endswith("/health")]
    status = json.loads(payload)
    assert topic == "dt/sunrace-01/health" and status["state"] == "running"
    assert status["detail"] == "configuration applied live: rules.cell-overtemp"
    # raising the limit again: the active alert is kept and clears under the new limit
    update(nucleus, adapter, "telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max=60.0))
    assert len(detector.core.active) == 1
    adapter.handle(temps(12.0, 52.0, 3))
    assert not detector.core.active
    # what went out on local pub/sub (through the SDK, on the topic the deploy grants)
    alerts = [m["jsonMessage"]["message"] for who, topic, m in nucleus.local if topic == "telemetry/alerts"]
    assert [(a["state"], a["t"], a["detail"]["max"]) for a in alerts if a["rule"] == "cell-overtemp"] == [
        ("raised", 11.0, 50), ("cleared", 12.0, 60)]


def test_a_deployment_whose_configuration_does_not_check_is_rejected_before_anything_changes(nucleus, core, caplog):
    adapter = core("telemetry.AnomalyDetector", sample())
    before = json.loads(json.dumps(nucleus.configurations["telemetry.AnomalyDetector"]))
    bad = configuration_update_of("telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max="hot"))
    result = nucleus.deploy("telemetry.AnomalyDetector", bad, "d-bad")
    # the deployment fails with the component's reason (Greengrass rolls it back), nothing was applied
    assert result == "FAILED: component configuration 'vehicle' [[rules]] #1 max: must be a number, not 'hot'"
    assert nucleus.configurations["telemetry.AnomalyDetector"] == before
    nucleus.drain()
    assert adapter.watcher.counts["config_rejected"] == 1 and adapter.watcher.counts["config_updates"] == 0
    assert "deployment d-bad rejected" in caplog.text
    # a DBC the zip does not carry is rejected too (a new DBC is new code: the deploy uploads it)
    other = sample()
    other["dbc"] = ["solar_car.dbc", "other_car.dbc"]
    result = nucleus.deploy("telemetry.AnomalyDetector", configuration_update_of("telemetry.AnomalyDetector", other),
                            "d-dbc")
    assert result == "FAILED: component configuration 'vehicle': DBC file(s) other_car.dbc not in the component's artefact"
    # a good one is accepted, and applied
    update(nucleus, adapter, "telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max=50.0))
    assert [r["status"] for _, r in nucleus.reports] == ["REJECTED", "REJECTED", "ACCEPTED"]
    assert adapter.watcher.counts["config_applied"] == 1


def test_a_configuration_written_past_the_validation_is_refused_and_the_old_one_stays(nucleus, core, caplog):
    adapter = core("telemetry.AnomalyDetector", sample())
    before = adapter._services.config
    update(nucleus, adapter, "telemetry.AnomalyDetector", with_rule(sample(), "cell-overtemp", max="hot"),
           validated=False)  # the validation timed out, or a hand-made local change
    assert adapter._services.config is before
    assert adapter.watcher.counts == {"config_updates": 1, "config_applied": 0, "config_refused": 1,
                                      "config_restart_needed": 0, "config_rejected": 0}
    assert "configuration update refused, the previous one stays in effect" in caplog.text
    assert adapter.watcher.last_error == "component configuration 'vehicle' [[rules]] #1 max: must be a number, not 'hot'"
    statuses = [json.loads(p) for _, t, p in nucleus.published if t.endswith("/health")]
    assert statuses[-1]["state"] == "config_refused" and statuses[-1]["counters"]["config_refused"] == 1


def test_what_cannot_apply_live_is_said_not_ignored(nucleus, core, caplog):
    adapter = core("telemetry.Aggregator", sample())
    window_before = adapter.component.core
    changed = sample()
    changed["aggregator"]["window_seconds"] = 2.0
    changed["rules"] = changed["rules"][:1]  # not the aggregator's concern
    update(nucleus, adapter, "telemetry.Aggregator", changed)
    assert adapter.watcher.restart_needed == ("aggregator.window_seconds",)
    assert adapter.component.core is window_before
    assert adapter._services.config.aggregator.window_seconds == 5.0  # still in effect until a restart
    assert "aggregator.window_seconds: not applied live, takes effect when the component restarts" in caplog.text
    status = [json.loads(p) for _, t, p in nucleus.published if t.endswith("/health")][-1]
    assert status["state"] == "restart_needed"
    assert status["detail"] == "configuration: restart needed for aggregator.window_seconds"
    assert status["counters"]["config_restart_needed"] == 1


def test_the_uploaders_budget_applies_live(nucleus, core):
    adapter = core("telemetry.Uploader", sample())
    changed = sample()
    changed["uploader"].update(budget_bytes_per_hour=2_000_000, max_publishes_per_second=5.0)
    update(nucleus, adapter, "telemetry.Uploader", changed)
    sender = adapter.component.core.sender
    assert sender.cfg.budget_bytes_per_hour == 2_000_000 and adapter.component.core.cfg is sender.cfg
    assert sender.publishes.rate == 5.0
    assert adapter.watcher.restart_needed == ()


def test_every_live_key_is_a_key_its_component_uses_and_docs_config_lists_them():
    # the classification itself
    assert classify("AnomalyDetectorComponent", ["rules.x", "detector.update_seconds", "aggregator.codec"]) == \
        component_config.Change(("rules.x", "detector.update_seconds"), (), ("aggregator.codec",))
    assert classify("UploaderComponent", ["uploader.topic_prefix", "uploader.budget_bytes_per_hour"]).restart == (
        "uploader.topic_prefix",)
    for component, keys in LIVE.items():
        assert all(component_config._matches(k, USES[component]) for k in keys)
    # docs/CONFIG.md's table says the same as the code, component by component
    text = (ROOT / "docs/CONFIG.md").read_text()
    section = text[text.index("## Tuning a deployed car"):].split("\n## ")[0]
    rows = {"anomaly detector": "AnomalyDetectorComponent", "uploader": "UploaderComponent",
            "aggregator": "AggregatorComponent", "CAN reader": "CanReaderComponent"}
    for label, component in rows.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
        live_cell = row.split("|")[2]
        documented = {k.removesuffix("*") for k in re.findall(r"`([a-z_]+\.[a-z_*]+)`", live_cell)}
        assert documented == set(LIVE.get(component, ())), label
        # and what the table says needs a restart does need one
        for key in re.findall(r"`([a-z_]+\.[a-z_]+)`", row.split("|")[3]):
            assert classify(component, [key]).restart == (key,), (label, key)
    every = next(line for line in section.splitlines() if line.startswith("| every component |"))
    assert set(re.findall(r"`([a-z_]+\.[a-z_]+)`", every)) == set(component_config.LIVE_EVERYWHERE)


def test_serve_on_a_core_reads_and_follows_the_configuration(nucleus, monkeypatch):
    import logging
    import signal

    env = nucleus.component("telemetry.AnomalyDetector", deployed("telemetry.AnomalyDetector", with_rule(
        sample(), "cell-overtemp", max=45.0)), token="svcuid-detector")
    recipe = next(r for r in load_recipes(ROOT / "recipes") if r.name == "telemetry.AnomalyDetector")
    for key, value in {**env, **recipe.environment}.items():
        monkeypatch.setenv(key, value)
    adapter = LambdaAdapter(AnomalyDetectorComponent, str(SAMPLE / "handler.py"))  # vehicle.toml beside it
    previous, level = signal.getsignal(signal.SIGTERM), logging.getLogger("telemetry").level
    try:
        assert adapter.serve() is False  # built, SIGTERM handled, following its configuration; no loop to start
        nucleus.drain()
        assert next(r for r in adapter._services.config.rules if r.name == "cell-overtemp").max == 45.0
        assert [(name, path) for _, name, path in nucleus.subscriptions] == [("telemetry.AnomalyDetector", ["vehicle"])]
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger("telemetry").setLevel(level)
        adapter.stop(timeout=5)
        adapter._services.ipc.close()
    nucleus.drain()
    assert nucleus.subscriptions == [] and nucleus.validators == []  # stopping closed the streams
