"""The vehicle configuration: good files load, mistakes are refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemetry.edge.config import load_config
from telemetry.edge.errors import ConfigError

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
        ('vehicle = "c"\n[[rules]]\nname = "x"\nsignals = []\nmax = 1\n', "must be a pattern or a list"),
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
    assert kinds == {"limit", "rate", "stale", "spread", "zscore", "bus"}  # the sample uses every kind


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
