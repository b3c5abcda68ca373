"""The vehicle configuration: good files load, mistakes are refused with the file and key named."""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from telemetry.edge.config import load_config, parse_config
from telemetry.edge.errors import ConfigError
from telemetry.edge.rules import RULES, BusRule, Rule
from telemetry.edge.rules.bus import BUS_COUNTERS

ROOT = Path(__file__).resolve().parents[2]


def test_the_sample_configuration_loads_with_paths_relative_to_it():
    cfg = load_config(ROOT / "vehicles/sample/vehicle.toml")
    assert cfg.vehicle == "sunrace-01"
    assert cfg.dbc == (str(ROOT / "vehicles/sample/solar_car.dbc"),)
    assert Path(cfg.dbc[0]).is_file()
    assert cfg.cloud_prefix == "dt/sunrace-01"
    assert {r.name for r in cfg.rules} >= {"cell-overtemp", "cell-undervoltage"}


@pytest.mark.parametrize(
    "text, problem",
    [
        ('vehicle = "c"\n[aggregator]\nwindow_secs = 1\n', r"\[aggregator\]: unknown key\(s\) window_secs"),
        ('vehicle = "c"\n[aggregator]\nwindow_seconds = 0\n', "must be a positive number"),
        ('vehicle = "a/b"\n', "'vehicle' must be"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\n', "needs 'min', 'max' or both"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmin = 5\nmax = 1\n', "min 5 is not below max 1"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = 1\nseverity = "bad"\n', "severity must be one of"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = 1\nkind = "magic"\n', "unknown rule kind 'magic'"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "rate"\nsignals = "A.*"\nmax = 1\n', "max do not apply to a rate rule"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "rate"\nsignals = "A.*"\n', "a rate rule needs 'max_rate'"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "stale"\nsignals = "A.*"\ntimeout = -1\n', "'timeout' must be a positive number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "stale"\nsignals = "A.*"\ntimeout = 1\nscope = "bus"\n', "scope must be"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "zscore"\nsignals = "A.*"\nthreshold = 4\nwarmup = 500\n', "'warmup' must be"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "bus"\ncounter = "lost"\nmax_per_second = 1\n', "'counter' must be one of"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = 1\nmin_duration = -2\n', "'min_duration' must be zero or more"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = 1\nhysteresis = nan\n', "hysteresis: must be a finite number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = 1\nclear_duration = inf\n', "clear_duration: must be a finite number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmax = nan\n', "max: must be a finite number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = "A.*"\nmin = -inf\nmax = 1\n', "min: must be a finite number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = "rate"\nsignals = "A.*"\nmax_rate = inf\n', "max_rate: must be a finite number"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = []\nmax = 1\n', "must be a pattern or a list"),
        ('vehicle = "c"\n[[rules]]\nsignals = "A.*"\nmax = 1\n', "needs a 'name' \\(without '/'\\)"),
        ('vehicle = "c"\n[[rules]]\nname = "a/b"\nsignals = "A.*"\nmax = 1\n', "needs a 'name' \\(without '/'\\)"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nmax = 1\n', "needs 'signals'"),
        ('vehicle = "c"\n[[rules]]\nname = "x"\nkind = ["limit"]\nsignals = "A.*"\nmax = 1\n', "unknown rule kind"),
        ('vehicle = "c"\n[aggregator]\nlateness_seconds = -1\n', "lateness_seconds: must be zero or more"),
        ('vehicle = "c"\n[[aggregator.groups]]\nname = "g"\n', "needs 'name' and 'signals'"),
        ('vehicle = "c"\n[[aggregator.groups]]\nname = "default"\nsignals = "A.*"\n', "group name 'default' is taken"),
        ('vehicle = "c"\nwindow = [\n', "not valid TOML"),
    ],
)
def test_mistakes_are_refused_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "car.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_every_shipped_configuration_loads():
    for path in sorted((ROOT / "vehicles").glob("*/*.toml")):
        cfg = load_config(path)
        assert cfg.rules, path
    kinds = {r.kind for r in load_config(ROOT / "vehicles/sample/vehicle.toml").rules}
    assert kinds == set(RULES)  # the sample uses every kind


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# -- the registry is the only list of rule kinds -------------------------------------------------


def own_keys(cls: type[Rule]) -> list[str]:
    return sorted({f.name for f in fields(cls)} - {f.name for f in fields(Rule)})


def test_every_registered_kind_is_a_rule_class_named_by_its_key():
    for kind, cls in RULES.items():
        assert issubclass(cls, Rule) and cls.kind == kind
        with pytest.raises(FrozenInstanceError):
            cls(name="x").name = "y"  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(RULES))
def test_every_key_of_every_kind_is_documented(kind):
    doc = (ROOT / "docs/CONFIG.md").read_text()
    common = doc.split("## `[[rules]]`", 1)[1].split("\n### ", 1)[0]
    for key in [f.name for f in fields(Rule)] + ["kind"]:
        assert f"`{key}`" in common, key
    section = re.search(rf"^### `{kind}`.*?(?=^#|\Z)", doc, re.DOTALL | re.MULTILINE)
    assert section, f"docs/CONFIG.md has no section for the {kind} rule"
    for key in own_keys(RULES[kind]):
        assert re.search(rf"\b{key}\b", section.group()), f"{kind}: {key} is not documented"


def test_every_bus_counter_is_documented():
    doc = (ROOT / "docs/CONFIG.md").read_text()
    assert all(f'"{counter}"' in doc for counter in BUS_COUNTERS)


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({"vehicle": "c", "rules": [{"name": "x", "kind": "magic", "signals": "A.*"}]}, source="car.toml")
    assert str(err.value) == f"car.toml [[rules]] #1: unknown rule kind 'magic' (known: {', '.join(RULES)})"


@pytest.mark.parametrize("kind", list(RULES))
def test_a_stray_key_is_refused_naming_the_keys_of_the_kind(kind):
    with pytest.raises(ConfigError, match=f"key\\(s\\) bogus do not apply to a {kind} rule") as err:
        parse_config({"vehicle": "c", "rules": [{"name": "x", "kind": kind, "signals": "A.*", "bogus": 1}]})
    takes = str(err.value).split("(it takes: ", 1)[1].rstrip(")").split(", ")
    assert takes == sorted({f.name for f in fields(RULES[kind])} | {"kind"})


def test_a_rule_table_becomes_an_instance_of_its_kind_with_the_defaults_of_that_kind():
    rules = parse_config({"vehicle": "c", "rules": [
        {"name": "l", "signals": "A.*", "max": 1.0},
        {"name": "b", "kind": "bus", "counter": "error", "max_per_second": 2.0}]}).rules
    assert [type(r) for r in rules] == [RULES["limit"], BusRule]
    assert rules[0].signals == ("A.*",) and rules[0].severity == "warning" and rules[0].min_duration == 0.0
    assert rules[1] == BusRule(name="b", counter="error", max_per_second=2.0)
    assert rules[1].signals == ("bus.*",) and rules[1].window_seconds == 5.0


def test_an_unknown_statistic_is_named_on_one_line_whatever_it_holds():
    # hypothesis (tests/faults/test_fuzz.py) found a statistic named "\n" printed raw
    with pytest.raises(ConfigError) as refused:
        parse_config({"vehicle": "car", "aggregator": {"stats": ["count", "\n", "p99"]}})
    message = str(refused.value)
    assert "\n" not in message
    assert "unknown statistic(s) '\\n', 'p99'" in message
