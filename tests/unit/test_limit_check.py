"""The reader's limit check decodes only the watched signals and judges all (rule, signal) pairs
in one table (``LimitCheck.check``); it answers exactly as the check it replaced (the frames of
watched ids decoded whole, then each rule in turn: ``support.limit_before``).

GIVEN generated DBCs (multiplexers nested in multiplexers, floats, overlapping layouts, a message
only cantools decodes), limit rules over them (one signal watched by several rules, patterns that
match nothing, bounds inside the values and beyond), and sequences of batches of frames (NaN,
infinite and huge float bits, short and long payloads, multiplexer values without a branch,
unknown ids, error and remote frames), WHEN both checks see the same batches, THEN every answer,
the crossings counted, and what each later batch is judged against are the same.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
import test_vector_decode as generated
from cantools.database.can import Message, Signal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from support import limit_before
from support.helpers import frame
from telemetry.edge.config import load_config, parse_config
from telemetry.edge.decode import DbcDecoder
from telemetry.edge.frames import Frames
from telemetry.edge.plan import MessagePlan, Program, only
from telemetry.edge.reader import LimitCheck
from telemetry.edge.sources import LogSource

SAMPLE = Path(__file__).resolve().parents[2] / "vehicles" / "sample"
# bounds among the sample drive's values (cell volts, degrees, amps): signals cross them often, both ways
NEAR = st.one_of(st.none(), st.sampled_from([3.6, 3.8, 3.9, 4.0, 4.1, 25.0, 30.0, 35.0, 40.0, 0.0, 10.0, 50.0, 80.0]))
BOUNDS = st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 4.2, 100.0, -100.0, 1e6, -1e6, 1e300]),
                   st.floats(-1e4, 1e4, allow_nan=False))


def bounds(low: float | None, high: float | None) -> dict[str, float]:
    """A limit rule's ``min`` and ``max`` from two drawn bounds (a rule needs one, min below max)."""
    if low is not None and high is not None and low >= high:
        low, high = (high, low) if high < low else (low, None)
    if low is None and high is None:
        high = 0.0
    return {**({"min": low} if low is not None else {}), **({"max": high} if high is not None else {})}


def limit_rules(draw, names: list[str]) -> list[dict]:
    """Limit rules over some of ``names`` (exact names, patterns, a pattern matching nothing),
    now and then a rule of another kind (the check leaves it out)."""
    rules = []
    for i in range(draw(st.integers(0, 5))):
        patterns = draw(st.lists(st.one_of(st.sampled_from(names), st.sampled_from(["*", "M0.*", "*.S1", "*Mux*", "No.*"])),
                                 min_size=1, max_size=3))
        rules.append({"name": f"r{i}", "kind": "limit", "signals": patterns, **bounds(draw(BOUNDS), draw(BOUNDS))})
    if draw(st.booleans()):
        rules.append({"name": "quiet", "kind": "stale", "signals": "*", "timeout": 1.0})
    return rules


def config_rules(dbc: Path, rules: list[dict]) -> list:
    return parse_config({"vehicle": "v", "dbc": [str(dbc)], "rules": rules}, base=Path("/")).rules


class WholeDecoder:
    """A decoder without plans (only the ``Decoder`` protocol): the check decodes its watched frames whole."""

    def __init__(self, decoder: DbcDecoder) -> None:
        self.inner = decoder

    def decode(self, frames):
        return self.inner.decode(frames)

    def decode_frames(self, frames):
        return self.inner.decode_frames(frames)

    def names_of(self, frame_id, extended):
        return self.inner.names_of(frame_id, extended)


def same_answers(checks: list[tuple[LimitCheck, limit_before.LimitCheck]], batches: list[Frames], decoder) -> None:
    for frames in batches:
        for new, old in checks:
            assert new.check(frames, decoder) == limit_before.check_frames(old, frames, decoder)
            assert new.crossings == old.crossings
    event(f"crossings: {[min(old.crossings, 3) for _, old in checks]}")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_check_answers_as_the_whole_decode_did(tmp_path_factory, data):
    # GIVEN up to four generated messages and a message only cantools decodes (a 72-bit signal)
    ids = data.draw(st.lists(st.sampled_from([0x10, 0x11, 0x123, 0x1ABCDE]), min_size=1, max_size=4, unique=True))
    known = [data.draw(generated.messages(frame_id, f"M{i}")) for i, frame_id in enumerate(ids)]
    wide = Message(0x300, "Wide", 12, [Signal("Huge", start=0, length=72), Signal("S1", start=72, length=8)])
    if data.draw(st.booleans()):
        known.append(wide)
    decoder = generated.decoder_for(tmp_path_factory, known)
    dbc = Path(decoder.files[0])
    names = [name for m in known for name in decoder.names_of(m.frame_id, m.is_extended_frame)] or ["M0.S0"]
    rules = config_rules(dbc, limit_rules(data.draw, names))
    # WHEN both checks see the same batches: hostile payloads, and random ones
    batches = [Frames.from_messages(data.draw(st.one_of(generated.hostile_batches(known), generated.batches(known))))
               for _ in range(data.draw(st.integers(1, 5)))]
    checks = [(LimitCheck(rules), limit_before.LimitCheck(rules))]
    same_answers(checks, batches, decoder)
    # THEN the same; and so for a decoder without plans, and after the rules change
    same_answers([(LimitCheck(rules), limit_before.LimitCheck(rules))], batches, WholeDecoder(decoder))
    changed = config_rules(dbc, limit_rules(data.draw, names))
    checks.append((LimitCheck(changed), limit_before.LimitCheck(changed)))
    same_answers(checks, batches[::-1], decoder)


@pytest.fixture(scope="module")
def sample_drive():
    """The sample drive, its decoder and its vehicle's rules."""
    chunk = next(iter(LogSource(SAMPLE / "drive.log").frame_batches(threading.Event(), 20000)))
    return chunk, DbcDecoder([SAMPLE / "solar_car.dbc"]), load_config(SAMPLE / "vehicle.toml").rules


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, 19999), max_size=40, unique=True),
       limits=st.lists(st.tuples(st.sampled_from(["BMS_CellVoltages.Cell0*", "BMS_CellTemps.*", "*.PackCurrent",
                                                  "MC_Drive.*", "*"]), NEAR, NEAR), max_size=4),
       spikes=st.lists(st.tuples(st.integers(0, 19999), st.integers(0, 255)), max_size=30))
def test_the_sample_drive_checked_in_any_cuts_answers_as_before(sample_drive, cuts, limits, spikes):
    # GIVEN the sample drive (multiplexed cells, unknown ids, error frames), with some bytes
    # changed (multiplexer values without a branch, values across limits), its vehicle's limit
    # rules and more, checked in batches cut anywhere
    frames, decoder, rules = sample_drive
    data = frames.data.copy()
    for row, value in spikes:
        data[row, value % 8] = value
    frames = dataclasses.replace(frames, data=data)
    extra = [{"name": f"x{i}", "kind": "limit", "signals": pattern, **bounds(low, high)}
             for i, (pattern, low, high) in enumerate(limits)]
    rules = [*rules, *config_rules(SAMPLE / "solar_car.dbc", extra)]
    edges = [0, *sorted(cuts), len(frames)]
    batches = [frames.take(slice(a, b)) for a, b in itertools.pairwise(edges)]
    new, old = LimitCheck(rules), limit_before.LimitCheck(rules)
    same_answers([(new, old)], batches, decoder)
    assert new.crossings == old.crossings


def test_a_plan_cut_down_to_some_signals_gives_their_values_and_fails_where_the_whole_plan_does(tmp_path):
    # GIVEN a multiplexed message with a branch for 0 and 1 only, and a plan of one signal of it
    (tmp_path / "car.dbc").write_text("""VERSION ""
BO_ 256 Muxed: 4 X
 SG_ Sel M : 0|8@1+ (1,0) [0|0] "" Y
 SG_ A m0 : 8|16@1+ (0.5,0) [0|0] "" Y
 SG_ B m1 : 8|16@1- (1,0) [0|0] "" Y
 SG_ C : 24|8@1+ (1,0) [0|0] "" Y
""")
    decoder = DbcDecoder([tmp_path / "car.dbc"])
    plan = decoder.plan_of(256, False)
    assert isinstance(plan, MessagePlan) and decoder.plan_of(257, False) is None
    data = np.zeros((3, 8), np.uint8)  # payloads zero-padded to 8 bytes, as in a batch
    data[:, :4] = [[0, 16, 0, 7], [2, 16, 0, 8], [1, 255, 255, 9]]  # module 2: no branch
    whole, part = Program(), Program()
    failed_whole, failed_part = np.zeros(3, bool), np.zeros(3, bool)
    rows = np.arange(3)
    cells = whole.run(data, rows, np.full(3, whole.add(plan)), failed_whole)
    cut = part.run(data, rows, np.full(3, part.add(only(plan, frozenset({"Muxed.B"})))), failed_part)
    # THEN the same frames fail, and the kept signal (and the multiplexer) have the whole plan's values
    assert failed_part.tolist() == failed_whole.tolist() == [False, True, False]
    names = [part.names[n] for n in cut.names.tolist()]
    assert sorted(names) == ["Muxed.B", "Muxed.Sel", "Muxed.Sel"]
    b = cut.values[[n == "Muxed.B" for n in names]]
    assert b.tolist() == cells.values[[whole.names[n] == "Muxed.B" for n in cells.names.tolist()]].tolist() == [-1.0]


def test_a_signal_back_inside_its_limit_crosses_again_and_values_no_measurement_never_cross(tmp_path):
    # GIVEN a float signal with a limit, and a multiplexed one watched by two rules
    (tmp_path / "car.dbc").write_text("""VERSION ""
BO_ 256 Probe: 8 X
 SG_ Temp : 0|64@1- (1,0) [0|0] "" Y
BO_ 257 Cells: 3 X
 SG_ Module M : 0|8@1+ (1,0) [0|0] "" Y
 SG_ V1 m0 : 8|16@1+ (0.001,0) [0|0] "" Y
 SG_ V2 m1 : 8|16@1+ (0.001,0) [0|0] "" Y
SIG_VALTYPE_ 256 Temp : 2;
""")
    decoder = DbcDecoder([tmp_path / "car.dbc"])
    rules = config_rules(tmp_path / "car.dbc", [
        {"name": "hot", "kind": "limit", "signals": "Probe.Temp", "max": 10.0},
        {"name": "low", "kind": "limit", "signals": "Cells.V*", "min": 3.0},
        {"name": "high", "kind": "limit", "signals": "Cells.V*", "max": 4.2}])
    new, old = LimitCheck(rules), limit_before.LimitCheck(rules)

    def temps(*values: float) -> Frames:
        return Frames.from_messages([frame(i, 256, np.float64(v).tobytes()) for i, v in enumerate(values)])

    def cells(*pairs: tuple[int, float]) -> Frames:
        return Frames.from_messages([frame(i, 257, bytes([m]) + round(v * 1000).to_bytes(2, "little"))
                                     for i, (m, v) in enumerate(pairs)])

    # WHEN batches come: THEN a crossing is said once, again after the signal came back inside,
    # never for a value that is no measurement (left out: the signal stays where it was)
    answers = []
    for frames in [temps(5.0), temps(20.0), temps(30.0), temps(5.0), temps(25.0),  # back inside, across again
                   temps(float("inf")), temps(1e101), temps(float("nan")), temps(5.0, float("inf")),
                   temps(float("nan"), 15.0),  # across again, after a NaN left out
                   cells((0, 3.5), (1, 3.6)), cells((1, 2.5)), cells((1, 4.5)), cells((1, 3.5), (2, 1.0)),  # 2: no branch
                   cells((0, 4.3)), cells((0, 4.4), (0, 3.7)), cells((0, 4.5))]:
        answers.append(new.check(frames, decoder))
        assert answers[-1] == limit_before.check_frames(old, frames, decoder)
    assert answers == [False, True, False, False, True, False, False, False, False, True,
                       False, True, True, False, True, False, True]
    assert new.crossings == old.crossings == 7


@settings(max_examples=40)
@given(frames=st.lists(st.tuples(st.sampled_from([0x0CF004, 0x18FEF1, 0x500]), st.integers(0, 7), st.integers(0, 255),
                                 st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=8))), max_size=60),
       limits=st.lists(st.tuples(st.sampled_from(["EEC1@sa*.*", "EEC1@sa0A.EngineSpeed", "CCVS1@sa*.*", "*.DoorOpen"]),
                                 st.sampled_from([None, 0.0, 10.0, 100.0, 1000.0, 5000.0]),
                                 st.sampled_from([None, 0.0, 10.0, 100.0, 1000.0, 5000.0])), min_size=1, max_size=3),
       cut=st.integers(0, 60))
def test_j1939_signals_are_watched_per_source_address_as_before(frames, limits, cut):
    # GIVEN a J1939 DBC (signals named per source address), frames of every priority and source
    # address (short payloads among them), and limit rules over some of them
    dbc = Path(__file__).resolve().parents[1] / "faults" / "data" / "j1939.dbc"
    decoder = DbcDecoder([dbc])
    messages = [frame(i * 0.01, pgn if pgn == 0x500 else (priority << 26) | (pgn << 8) | sa, data)
                for i, (pgn, priority, sa, data) in enumerate(frames)]
    rules = config_rules(dbc, [{"name": f"r{i}", "kind": "limit", "signals": pattern, **bounds(low, high)}
                               for i, (pattern, low, high) in enumerate(limits)])
    new, old = LimitCheck(rules), limit_before.LimitCheck(rules)
    # WHEN both check the frames in two batches; THEN the same answers
    batches = [Frames.from_messages(part) for part in (messages[:cut], messages[cut:]) if part]
    same_answers([(new, old)], batches, decoder)
