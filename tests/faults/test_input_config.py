"""Issue 11, point 13: the configuration is checked completely, before anything runs."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest

from telemetry.edge.config import (
    AggregatorConfig,
    DetectorConfig,
    ReaderConfig,
    UploaderConfig,
    load_config,
    parse_config,
)
from telemetry.edge.errors import ConfigError
from telemetry.edge.rules import rule_class

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DBC = ROOT / "vehicles" / "sample" / "solar_car.dbc"


def config(**tables):
    return parse_config({"vehicle": "car-01", "dbc": [str(SAMPLE_DBC)], **tables}, base=Path("/"))


def numbers(cls) -> list[str]:
    hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return [name for name, hint in hints.items() if "float" in hint or "int" in hint]


SECTIONS = {"reader": ReaderConfig, "aggregator": AggregatorConfig, "uploader": UploaderConfig, "detector": DetectorConfig}
EVERY_NUMBER = [(section, key) for section, cls in SECTIONS.items() for key in numbers(cls)]


@pytest.mark.parametrize("section, key", EVERY_NUMBER, ids=[f"{s}.{k}" for s, k in EVERY_NUMBER])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_for_every_number(section, key, value):
    with pytest.raises(ConfigError, match=key):
        config(**{section: {key: value}})


LIMITS = {"limit": ("max", {"max": 1.0}), "rate": ("max_rate", {"max_rate": 1.0}),
          "spread": ("max_spread", {"max_spread": 1.0}), "stale": ("timeout", {"timeout": 1.0}),
          "zscore": ("threshold", {"threshold": 3.0})}


@pytest.mark.parametrize("kind", sorted(LIMITS))
@pytest.mark.parametrize("value", [math.nan, math.inf, "55"], ids=["nan", "inf", "a string"])
def test_a_rule_number_that_is_nan_infinite_or_a_string_is_refused_at_load(kind, value):
    key, good = LIMITS[kind]
    rule = {"name": "r", "kind": kind, "signals": "BMS_PackStatus.PackCurrent", **good}
    config(rules=[rule])  # the rule as it should be loads
    with pytest.raises(ConfigError, match=key):
        config(rules=[{**rule, key: value}])
    for common in ("min_duration", "hysteresis", "clear_duration"):
        with pytest.raises(ConfigError, match=common):
            config(rules=[{**rule, common: math.nan}])


def test_limit_min_nan_no_longer_disables_the_limit():
    with pytest.raises(ConfigError, match="min"):
        config(rules=[{"name": "r", "kind": "limit", "signals": "A.b", "min": math.nan, "max": 5.0}])


@pytest.mark.parametrize("value", ["no", "false", 0, 1])
def test_booleans_must_be_booleans(value):
    with pytest.raises(ConfigError, match="compress: must be true or false"):
        config(uploader={"compress": value})
    with pytest.raises(ConfigError, match="evict_alerts"):
        config(uploader={"evict_alerts": value})


def test_whole_numbers_must_be_whole():
    with pytest.raises(ConfigError, match="max_payload_bytes"):
        config(uploader={"max_payload_bytes": 1000.5})
    with pytest.raises(ConfigError, match="batch_max_frames"):
        config(reader={"batch_max_frames": "500"})


@pytest.mark.parametrize("prefix", ["dt/+/{vehicle}", "dt/#", "dt/*/{vehicle}", "dt/\0/{vehicle}", "$aws/things/{vehicle}",
                                    "$AWS/rules/x", "dt/{vehicle}/{other}", "dt/{0}", "dt/{vehicle!r}", "dt/{vehicle:>9}",
                                    "a/b/c/d/e/f/g/{vehicle}", "dt/" + "x" * 250 + "/{vehicle}", "dt//{vehicle}", "/dt/{vehicle}",
                                    "dt/{vehicle", ""])
def test_a_topic_prefix_that_could_grant_a_wildcard_or_break_iot_core_rules_is_refused(prefix):
    with pytest.raises(ConfigError, match="topic_prefix"):
        config(uploader={"topic_prefix": prefix})


@pytest.mark.parametrize("vehicle", ["a+b", "a#", "a*", "a/b", "a\0b", "$aws", "a b", "x" * 129, "", 7])
def test_a_vehicle_id_that_is_no_valid_topic_level_is_refused(vehicle):
    with pytest.raises(ConfigError, match="'vehicle'"):
        parse_config({"vehicle": vehicle})


def test_a_valid_prefix_and_vehicle_load():
    cfg = config(uploader={"topic_prefix": "fleet/eu/{vehicle}/telemetry"})
    assert cfg.cloud_prefix == "fleet/eu/car-01/telemetry"


def test_a_batch_limit_beyond_what_the_recipes_allow_is_refused():
    with pytest.raises(ConfigError, match="replay_batch_frames: at most"):
        config(reader={"replay_batch_frames": 2_000_000})


def test_a_rule_whose_patterns_match_no_signal_is_reported_before_the_run(make_services, caplog):
    from telemetry.edge.components import CanReaderComponent
    from telemetry.edge.sources import LogSource

    services = make_services(rules=[
        {"name": "typo", "kind": "limit", "signals": "BMS_PackStatus.PackCurent", "max": 1.0},
        {"name": "fine", "kind": "limit", "signals": "BMS_PackStatus.PackCurrent", "max": 1.0},
        {"name": "bus", "kind": "bus", "counter": "error", "max_per_second": 1.0},
    ])
    with caplog.at_level(logging.WARNING):
        reader = CanReaderComponent(services, source=LogSource(ROOT / "vehicles" / "sample" / "drive.log"))
    assert reader.counters()["rules_matching_nothing"] == [
        "rule 'typo': signals BMS_PackStatus.PackCurent match no signal of the DBC files"]
    assert "typo" in caplog.text and "'fine'" not in caplog.text


def test_the_sample_and_example_configurations_still_load():
    load_config(ROOT / "vehicles" / "sample" / "vehicle.toml")
    load_config(ROOT / "vehicles" / "examples" / "ubc-brightside.toml")
    assert rule_class("limit", "x").kind == "limit"


@pytest.mark.parametrize("content", [None, b'vehicle = "\xff\xfe"\n'], ids=["a folder", "not UTF-8"])
def test_an_unreadable_configuration_file_is_one_config_error(tmp_path, content):
    path = tmp_path / "car.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{path}: "):
        load_config(path)


def test_a_configuration_saved_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "car.toml"
    path.write_text('vehicle = "car-01"\n', encoding="utf-8-sig")
    assert load_config(path).vehicle == "car-01"
