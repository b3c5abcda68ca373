"""Issue 11: fuzzing every input a user or a bus can hand us: log lines, DBC text, configuration
and pub/sub messages. Thousands of generated inputs in all; not one may raise anything but the
package's own error for a bad file (one line for the user), and every bad input is counted."""

from __future__ import annotations

import json
import math
import threading
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.helpers import columns
from telemetry.edge import messages
from telemetry.edge.clock import ManualClock
from telemetry.edge.components import AggregatorComponent, AnomalyDetectorComponent, Services
from telemetry.edge.config import load_config, parse_config
from telemetry.edge.decode import DbcDecoder, load_dbc
from telemetry.edge.errors import ConfigError, DbcError, MessageError
from telemetry.edge.frames import Frames
from telemetry.edge.reader import ReaderCore
from telemetry.edge.sources import LogSource
from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "vehicles" / "sample"
DBC_TEXT = (SAMPLE / "solar_car.dbc").read_text()
DBC_LINES = DBC_TEXT.splitlines()
DRIVE = (SAMPLE / "drive.log").read_text().splitlines()[:200]
DECODER = DbcDecoder([SAMPLE / "solar_car.dbc"])
SAMPLE_CONFIG = tomllib.loads((SAMPLE / "vehicle.toml").read_text())

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes a log line may hold: the frame syntax, noise, and characters no parser expects (no line ends).
NOISE = st.text(st.sampled_from(list("0123456789ABCDEFabcdefxXrRtT#()., -_:;\t\x00\x1c\x7f\u00e4\u20ac\ufeff")), max_size=40)


def mutated_line(draw: st.DrawFn, line: str) -> str:
    how = draw(st.sampled_from(["keep", "cut", "insert", "replace", "noise", "long"]))
    if how == "keep":
        return line
    at = draw(st.integers(0, len(line)))
    if how == "cut":
        return line[:at]
    if how == "insert":
        return line[:at] + draw(NOISE) + line[at:]
    if how == "replace":
        return line[:at] + draw(NOISE) + line[at + draw(st.integers(0, 8)):]
    if how == "long":
        return line.split("#")[0] + "#" + "AB" * draw(st.sampled_from([9, 17, 33, 65, 300]))
    return draw(NOISE)


@st.composite
def candump_logs(draw: st.DrawFn) -> list[str]:
    start = draw(st.integers(0, len(DRIVE) - 30))
    return [mutated_line(draw, line) for line in DRIVE[start:start + draw(st.integers(1, 30))]]


@given(candump_logs())
@settings(FUZZ, max_examples=200)
def test_fuzzed_candump_lines_are_each_a_frame_or_a_counted_bad_record(scratch, lines):
    path = scratch / "fuzz.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = LogSource(path)
    core = ReaderCore(DECODER, "fuzz")
    frames = 0
    for chunk in source.frame_batches(threading.Event()):
        frames += len(chunk)
        core.batch_message(chunk)
    end = core.end_message({"bad_records": len(source.bad_records)})
    # every line that is not blank gave one frame or one bad record (a byte-order mark opening
    # the file is not part of its first line)
    read_as_text = path.read_text(encoding="utf-8-sig").split("\n")
    assert frames + len(source.bad_records) == sum(1 for line in read_as_text if line.strip())
    assert frames == sum(core.totals[k] for k in ("read",)) + core.faults()["frames_quarantined"]
    assert json.dumps(end.encode(), allow_nan=False)


ASC_HEAD = ["date Thu Nov 26 09:15:12.123 pm 2026", "base hex  timestamps absolute", "internal events logged",
            "Begin Triggerblock Thu Nov 26 09:15:12.123 pm 2026"]
ASC_LINE = "   {t:.6f} 1  {id:X}             Rx   d 8 01 02 03 04 05 06 07 08"


@st.composite
def asc_logs(draw: st.DrawFn) -> tuple[list[str], int]:
    body, garbage = [], 0
    for i in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["frame", "mutated", "garbage"]))
        line = ASC_LINE.format(t=i / 100, id=draw(st.sampled_from([0x100, 0x101, 0x300, 0x7FF])))
        if kind == "garbage":
            garbage += 1
            body.append("z" + draw(NOISE).replace("\x1c", "").replace("\ufeff", ""))
        else:
            body.append(line if kind == "frame" else mutated_line(draw, line))
    return ASC_HEAD + body + ["End TriggerBlock"], garbage


@given(asc_logs())
@settings(FUZZ, max_examples=150)
def test_fuzzed_asc_logs_count_every_garbage_line(scratch, log):
    lines, garbage = log
    path = scratch / "fuzz.asc"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bulk, each = LogSource(path), LogSource(path)
    got = Frames.concat(list(bulk.frame_batches(threading.Event())))
    ReaderCore(DECODER, "fuzz").batch_message(got)
    assert len(got) + len(bulk.bad_records) <= len(lines)
    assert len(bulk.bad_records) >= garbage
    assert sum(1 for m in each.frames(threading.Event()) if m is not None) == len(got)
    assert [str(r) for r in each.bad_records] == [str(r) for r in bulk.bad_records]


@st.composite
def dbc_texts(draw: st.DrawFn) -> str:
    lines = list(DBC_LINES)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "mutate", "truncate", "rename"]))
        if how == "delete":
            del lines[at]
        elif how == "duplicate":
            lines.insert(at, lines[at])
        elif how == "mutate":
            lines[at] = mutated_line(draw, lines[at])
        elif how == "truncate":
            lines = lines[:at]
        else:  # one message's name given to another
            names = [line.split()[2].rstrip(":") for line in lines if line.startswith("BO_ ") and len(line.split()) > 2]
            if len(names) > 1:
                lines = [line.replace(f" {names[1]}:", f" {names[0]}:") for line in lines]
    return "\n".join(lines) + "\n"


SOME_FRAMES = next(LogSource(SAMPLE / "drive.log").frame_batches(threading.Event(), max_frames=300))


@given(dbc_texts())
@settings(FUZZ, max_examples=80)
def test_fuzzed_dbc_files_load_or_are_refused_in_one_line(scratch, text):
    path = scratch / "fuzz.dbc"
    path.write_text(text)
    try:
        load_dbc(path)
        decoder = DbcDecoder([path])
    except DbcError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    frames = SOME_FRAMES
    decoded = decoder.decode_frames(frames)
    assert sum(decoded.frames[k] for k in ("decoded", "unknown_id", "decode_error", "error", "remote")) == len(frames)
    # two signals never share a column: every name is one message's signal
    assert len(set(decoded.batch.names)) == len(decoded.batch.names)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=20), st.lists(st.text(max_size=10), max_size=3))
KEYS = ["vehicle", "dbc", "reader", "aggregator", "uploader", "detector", "rules", "window_seconds", "max", "min", "name",
        "signals", "kind", "topic_prefix", "compress", "batch_max_frames", "groups", "include", "threshold", "spool_max_bytes"]


@st.composite
def configurations(draw: st.DrawFn) -> dict:
    data = json.loads(json.dumps(SAMPLE_CONFIG))
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(["top", "reader", "aggregator", "uploader", "detector", "rule"]))
        if table == "rule":
            rules = data.get("rules")
            target = rules[draw(st.integers(0, len(rules) - 1))] if isinstance(rules, list) and rules else data
        else:
            target = data if table == "top" else data.setdefault(table, {})
        if not isinstance(target, dict):
            break
        key = draw(st.sampled_from(KEYS + sorted(target)))
        target[key] = draw(VALUES)
    return data


@given(configurations())
@settings(FUZZ, max_examples=400)
def test_fuzzed_configurations_load_or_are_refused_with_a_config_error(config):
    try:
        cfg = parse_config(config, base=SAMPLE)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    # what loads is sound: every number finite, the topics valid
    assert math.isfinite(cfg.aggregator.window_seconds) and cfg.aggregator.window_seconds > 0
    assert not any(c in cfg.cloud_prefix for c in "+#*\0") and not cfg.cloud_prefix.startswith("$")


@given(st.text(max_size=300))
@FUZZ
def test_fuzzed_toml_text_is_refused_with_a_config_error(scratch, text):
    path = scratch / "car.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


def services(**config) -> Services:
    cfg = parse_config({**SAMPLE_CONFIG, "dbc": [], **config}, base=SAMPLE)
    return Services(local=InMemoryLocalTransport(), cloud=InMemoryCloudTransport(), config=cfg,
                    clock=ManualClock(1000.0), env={"TELEMETRY_OUTPUT_TOPIC": "telemetry/out"}, name="fuzz")


GOOD = messages.Signals("fuzz", 1, 0.0, 1.0, {"read": 2}, columns(**{"BMS_PackStatus.PackCurrent": ([0.0, 1.0], [1.0, 2.0])})).encode()
JSON = st.recursive(VALUES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@st.composite
def events(draw: st.DrawFn) -> object:
    how = draw(st.sampled_from(["json", "mutated", "bytes", "wire"]))
    if how == "json":
        return draw(JSON)
    if how == "bytes":
        return draw(st.binary(max_size=200))
    event = json.loads(json.dumps(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(event)))
        if isinstance(event[key], dict) and event[key] and draw(st.booleans()):
            inner = draw(st.sampled_from(sorted(event[key])))
            event[key][inner] = draw(JSON)
        else:
            event[key] = draw(JSON)
    if how == "wire":
        return json.dumps(event).encode()
    return event


COMPONENTS = None


@given(st.lists(events(), min_size=1, max_size=10))
@settings(FUZZ, max_examples=150)
def test_fuzzed_pubsub_messages_are_handled_or_counted_as_malformed(batch):
    global COMPONENTS
    if COMPONENTS is None:  # one pair for every example: what one message leaves behind must not break the next
        COMPONENTS = (AggregatorComponent(services()), AnomalyDetectorComponent(services()))
    for component in COMPONENTS:
        before = component.counters()["malformed"]
        refused = 0
        for event in batch:
            try:
                messages.decode(event, *component.accepts)
            except MessageError:
                refused += 1
            component.handle(event)  # never raises
        assert component.counters()["malformed"] - before >= refused
        counted = component.counters()["malformed"]
        component.handle(GOOD)  # and a good message is handled as if nothing had happened
        assert component.counters()["malformed"] == counted
