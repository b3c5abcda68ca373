"""The command line: one module per command, all registered; errors of ours are one line and exit
status 2, ``--debug`` re-raises them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from telemetry.edge.errors import LogFormatError
from telemetry.tools.cli import COMMANDS, main, parser

ROOT = Path(__file__).resolve().parents[2]
DBC = ROOT / "vehicles/sample/solar_car.dbc"

# Each command and options its --help must mention.
OPTIONS = {
    "replay": ["log", "--dbc", "--config", "--out", "--speed", "--strict", "--verbose", "--export", "--debug",
               "--processes", "--all-cpus"],
    "demo": ["--out", "--speed", "--strict", "--verbose", "--export"],
    "signals": ["--dbc", "--log", "--config"],
    "run": ["--interface", "--channel", "--bitrate", "--config", "--out", "--endpoint", "--drain", "--all-cpus"],
    "uploader": ["--config", "--spool", "--endpoint", "--port", "--cert", "--key", "--ca", "--client-id", "--drain"],
    "package": ["--arch", "--out", "--config"],
    "deploy": ["--thing-group", "--thing", "--bucket", "--role-arn", "--region", "--account", "--arch", "--config",
               "--out", "--legacy", "--dry-run", "--cloud-decoder", "--decoder-role-arn"],
    "simulate": ["--out", "--seconds", "--seed"],
    "decode-cloud": ["source", "--to", "--out", "--dbc", "--config"],
}


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_module_is_registered_under_its_own_name():
    assert set(_subcommands(parser())) == set(OPTIONS)
    assert [m.__name__.rsplit(".", 1)[1].replace("_", "-") for m in COMMANDS] == list(_subcommands(parser()))
    for module in COMMANDS:
        assert module.__doc__ and callable(module.add_subparser)


def test_top_level_help_lists_the_commands_and_debug(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out
    for command in OPTIONS:
        assert command in out


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_each_command_help_exits_0_and_names_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: telemetry {command}")
    for option in OPTIONS[command]:
        assert option in out


def test_defaults_are_unchanged():
    args = parser().parse_args(["demo"])
    assert (args.out, args.speed) == ("out/demo", 0.0)
    args = parser().parse_args(["deploy", "--thing", "t", "--bucket", "b"])
    assert (args.arch, args.out, args.dry_run, args.legacy) == ("aarch64", "build", False, False)
    assert Path(args.recipes).name == "recipes"
    args = parser().parse_args(["simulate"])
    assert (Path(args.out).name, args.seconds, args.seed) == ("drive.log", 240.0, 2026)


def test_a_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "usage: telemetry" in capsys.readouterr().err


def test_an_error_of_ours_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.log"
    status = main(["replay", str(missing), "--dbc", str(DBC), "--out", str(tmp_path / "out")])
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {missing}: no such file"]
    assert "Traceback" not in captured.err


def test_debug_re_raises_the_error(tmp_path):
    missing = tmp_path / "missing.log"
    with pytest.raises(LogFormatError, match="no such file"):
        main(["--debug", "replay", str(missing), "--dbc", str(DBC), "--out", str(tmp_path / "out")])


def test_debug_is_also_taken_after_the_command(tmp_path):
    missing = tmp_path / "missing.log"
    with pytest.raises(LogFormatError, match="no such file"):
        main(["replay", str(missing), "--dbc", str(DBC), "--out", str(tmp_path / "out"), "--debug"])
    assert parser().parse_args(["demo"]).debug is False
    assert parser().parse_args(["simulate", "--debug"]).debug is True


def test_replay_shares_one_cpu_unless_all_cpus_is_given(tmp_path):
    log = tmp_path / "start.log"
    log.write_text("".join((ROOT / "vehicles/sample/drive.log").read_text().splitlines(keepends=True)[:3000]))
    several = len(os.sched_getaffinity(0)) > 1
    for flags, pinned in (([], several), (["--all-cpus"], False)):
        out = tmp_path / ("out" + "".join(flags))
        assert main(["replay", str(log), "--dbc", str(DBC), "--out", str(out), "--no-progress", *flags]) == 0
        cpu = json.loads((out / "summary.json").read_text())["pinned_cpu"]
        assert (cpu is not None) == pinned, flags
