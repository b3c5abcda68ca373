"""The vectorised decoder gives what cantools gives frame by frame, bit for bit.

GIVEN messages built with cantools' own classes (every byte order, signed or not, 1 to 64 bits,
32/64-bit floats, any scale and offset, signals anywhere cantools accepts them, multiplexers
nested in multiplexers) and random payloads of every length, WHEN a batch is decoded by the plan
(``decode_frames``) and by cantools per frame (``decode_each``), THEN names, samples, values and
counters are the same.
"""

from __future__ import annotations

import itertools
import threading

import can
import cantools
import numpy as np
import pytest
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion, LinearConversion, NamedSignalConversion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.helpers import frame
from telemetry.edge.decode import DbcDecoder, DecodedBatch
from telemetry.edge.frames import Frames
from telemetry.edge.plan import MessagePlan, Unsupported
from telemetry.edge.sources import LogSource

SAMPLE_LOG_BATCH = 2000

scales = st.one_of(
    st.sampled_from([1, 1, 1.0, 2, -3, 10, 0.5, -0.25, 0.1, 0.001, 1e-6, 3.5, 0.0625]),
    st.integers(-1000, 1000),
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)
offsets = st.one_of(
    st.sampled_from([0, 0, 0.0, 1, -40, 273.15, -0.5, 2**40, -(2**50), 1e300]),
    st.integers(-(2**20), 2**20),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def signals(draw, name: str, payload_bits: int, floats: tuple[int, ...] = (32, 64)) -> Signal:
    is_float = draw(st.integers(0, 5)) == 0
    length = draw(st.sampled_from(floats)) if is_float else draw(st.integers(1, min(64, payload_bits)))
    return Signal(
        name,
        start=draw(st.integers(0, payload_bits - 1)),
        length=length,
        byte_order=draw(st.sampled_from(["little_endian", "big_endian"])),
        is_signed=draw(st.booleans()),
        conversion=BaseConversion.factory(draw(scales), draw(offsets), None, is_float),
    )


@st.composite
def messages(draw, frame_id: int, name: str, floats: tuple[int, ...] = (32, 64), lowest_id: int = 0,
             **options) -> Message:
    """A message cantools accepts: candidate signals are added one by one and kept when
    ``Message(strict=True)`` takes them (no overlap, inside the payload), or, in a non-strict
    message, all kept (overlapping and overflowing layouts, as a DBC loaded with strict=False has)."""
    length = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 12, 16, 20, 24, 32, 48, 64]))
    bits = 8 * length
    strict = draw(st.integers(0, 4)) > 0
    candidates: list[Signal] = []
    selectors: list[str] = []
    if draw(st.booleans()):  # a multiplexer, maybe with a multiplexer inside it
        for level in range(draw(st.integers(1, 2))):
            selector = Signal(f"Mux{level}", start=draw(st.integers(0, bits - 1)), length=draw(st.integers(1, 3)),
                              byte_order=draw(st.sampled_from(["little_endian", "big_endian"])),
                              is_signed=draw(st.booleans()), is_multiplexer=True,
                              conversion=BaseConversion.factory(draw(st.sampled_from([1, 1, 1, 2, 0.5, 1.5, -1])),
                                                                draw(st.sampled_from([0, 0, 1, -1, 0.25])), None, False))
            if selectors:
                selector.multiplexer_signal = selectors[-1]
                selector.multiplexer_ids = sorted(draw(st.sets(st.integers(lowest_id, 3), min_size=1, max_size=3)))
            selectors.append(selector.name)
            candidates.append(selector)
    for i in range(draw(st.integers(1, 6))):
        signal = draw(signals(f"S{i}", bits, floats))
        if selectors and draw(st.integers(0, 3)) > 0:
            signal.multiplexer_signal = draw(st.sampled_from(selectors))
            signal.multiplexer_ids = sorted(draw(st.sets(st.integers(lowest_id, 3), min_size=1, max_size=3)))
        candidates.append(signal)
    kept: list[Signal] = []
    for signal in candidates:
        try:
            Message(frame_id, name, length, [*kept, signal], strict=strict, **options)
        except Exception:  # cantools refuses the layout: leave the signal out
            continue
        kept.append(signal)
    return Message(frame_id, name, length, kept, strict=strict, is_extended_frame=frame_id > 0x7FF, **options)


@st.composite
def batches(draw, known: list[Message]) -> list[can.Message]:
    """Frames of the known messages (payloads of their length, shorter, longer), of an unknown
    id, error and remote frames."""
    frames = []
    for i in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["known"] * 8 + ["unknown", "error", "remote"]))
        message = draw(st.sampled_from(known))
        size = draw(st.one_of(st.just(message.length), st.integers(0, 64 if message.length > 8 else 8)))
        data = draw(st.binary(min_size=size, max_size=size))
        frame_id, extended = message.frame_id, message.is_extended_frame
        if kind == "unknown":
            frame_id, extended = 0x7FF, False
        frames.append(can.Message(timestamp=i * 0.01, arbitration_id=frame_id, is_extended_id=extended, data=data,
                                  is_fd=size > 8, is_error_frame=kind == "error", is_remote_frame=kind == "remote"))
    return frames


def same_floats(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Equal bit for bit, but NaN is NaN whatever its payload (the decoder drops it anyway)."""
    nan = np.isnan(ours)
    return bool(np.array_equal(nan, np.isnan(theirs)) and np.array_equal(ours[~nan].view(np.int64),
                                                                         theirs[~nan].view(np.int64)))


def assert_same(vectorised: DecodedBatch, each: DecodedBatch) -> None:
    assert vectorised.batch.names == each.batch.names
    for field in ("ids", "t", "v"):
        ours, theirs = getattr(vectorised.batch, field), getattr(each.batch, field)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, field
        assert np.array_equal(ours.view(np.uint8), theirs.view(np.uint8)), field  # bit for bit
    assert dict(vectorised.frames) == dict(each.frames)
    assert list(vectorised.unknown_ids.items()) == list(each.unknown_ids.items())
    assert list(vectorised.decode_errors.items()) == list(each.decode_errors.items())
    assert vectorised.non_finite == each.non_finite


def decoder_for(tmp_path_factory, known: list[Message]) -> DbcDecoder:
    path = tmp_path_factory.mktemp("dbc") / "generated.dbc"
    path.write_text(Database(messages=known, strict=False).as_dbc_string())
    return DbcDecoder([path])


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_vectorised_equals_cantools_per_frame(tmp_path_factory, data):
    # GIVEN a DBC of up to three generated messages, as cantools writes and loads it
    known = [data.draw(messages(frame_id, f"M{i}")) for i, frame_id in
             enumerate(data.draw(st.lists(st.sampled_from([0x10, 0x123, 0x7FE, 0x1ABCDE]), min_size=1, max_size=3,
                                          unique=True)))]
    decoder = decoder_for(tmp_path_factory, known)
    frames = Frames.from_messages(data.draw(batches(known)))
    # WHEN it is decoded both ways; THEN the same
    assert_same(decoder.decode_frames(frames), decoder.decode_each(frames))


@st.composite
def alike_branches(draw) -> Message:
    """A multiplexed message whose branches read the same bits the same way under other names
    (module 1's cells 1-3 and module 2's cells 4-6), which the plan reads in one pass; now and
    then a branch that differs (another scale, a float), which it may not."""
    length = 8
    mux = Signal("Module", start=0, length=4, is_multiplexer=True, byte_order="little_endian")
    layout = []
    start = 8
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 16))
        if start + size > 8 * length:
            break
        layout.append((start, size, draw(st.booleans()), draw(scales), draw(offsets)))
        start += size
    signals = [mux]
    for branch in range(draw(st.integers(2, 6))):
        odd = draw(st.integers(0, 4)) == 0
        for j, (first, size, signed, scale, offset) in enumerate(layout):
            if odd and j == 0:
                scale = scale * 2 if draw(st.booleans()) else scale
            signals.append(Signal(f"B{branch}S{j}", start=first, length=size, is_signed=signed,
                                  byte_order="little_endian", multiplexer_ids=[branch], multiplexer_signal="Module",
                                  conversion=BaseConversion.factory(scale, offset, None, False)))
    return Message(0x101, "Cells", length, signals, strict=True)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_branches_of_one_layout_read_in_one_pass_equal_cantools(tmp_path_factory, data):
    message = data.draw(alike_branches())
    decoder = decoder_for(tmp_path_factory, [message])
    n = data.draw(st.integers(1, 60))
    frames = [can.Message(timestamp=i * 0.01, arbitration_id=0x101, is_extended_id=False,
                          data=bytes([data.draw(st.integers(0, 8))]) + data.draw(st.binary(min_size=7, max_size=7)))
              for i in range(n)]  # module numbers of every branch, and some no branch has
    columns = Frames.from_messages(frames)
    assert_same(decoder.decode_frames(columns), decoder.decode_each(columns))


@settings(max_examples=120)
@given(data=st.data())
def test_plan_answers_as_cantools_frame_by_frame(data):
    """Below the DBC text: 16-bit floats, signals in the order they were given (not by start
    bit), a ranked order of the signals cantools returns per frame."""
    message = data.draw(messages(0x123, "M", floats=(16, 32, 64), lowest_id=-2, sort_signals=data.draw(
        st.sampled_from([None, "default"]).map(lambda s: None if s is None else
                                               cantools.database.utils.sort_signals_by_start_bit))))
    try:
        plan = MessagePlan.compile(message)
    except Unsupported:
        return
    payloads = data.draw(st.lists(st.binary(min_size=0, max_size=64), max_size=30))
    data_matrix = np.zeros((len(payloads), 64), np.uint8)
    for i, p in enumerate(payloads):
        data_matrix[i, :len(p)] = np.frombuffer(p, np.uint8)
    ok, blocks = plan.decode(data_matrix, np.array([len(p) for p in payloads], np.uint8))
    got: list[list[tuple[int, str, float]]] = [[] for _ in payloads]
    for block in blocks:
        for j, (name, rank) in enumerate(zip(block.names, block.ranks)):
            for row, value in zip(block.rows.tolist(), block.values[:, j].tolist()):
                got[row].append((rank, name, value))
    for i, payload in enumerate(payloads):
        try:
            expected = message.decode(payload, decode_choices=False)
        except Exception:
            assert not ok[i] and not got[i]
            continue
        assert ok[i]
        assert [name for _, name, _ in sorted(got[i])] == list(expected)
        assert same_floats(np.array([v for _, _, v in sorted(got[i])], np.float64),
                           np.array([float(v) for v in expected.values()], np.float64))


def test_exact_integer_arithmetic_and_python_float_steps():
    # GIVEN conversions whose result needs Python's exact ints, or its int * float steps
    signals = [
        Signal("Big", 0, 64, conversion=BaseConversion.factory(3, -7, None, False)),  # u64 * 3: beyond 64 bits
        Signal("Exact", 0, 60, conversion=LinearConversion(3, 0.5, False), multiplexer_ids=None),
        Signal("Named", 0, 56, is_signed=True,
               conversion=NamedSignalConversion(7, 11, {0: "zero"}, False)),
        Signal("Wide", 0, 56, conversion=BaseConversion.factory(3, 1, None, False)),  # past 2**53: not in floats
        Signal("Zero", 0, 8, conversion=LinearConversion(-2, -0.0, False)),  # 0 * -2 + -0.0 is 0.0 in Python
    ]
    rows = [bytes(range(248, 256)), b"\xff" * 8, bytes(8), (2**54 + 3).to_bytes(8, "little")]
    frames = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), 8)
    for signal in signals:
        message = Message(0x1, "M", 8, [signal], strict=True)
        try:
            plan = MessagePlan.compile(message)
        except Unsupported:
            assert signal.name == "Big"  # exact in Python ints only: cantools decodes it
            continue
        ok, blocks = plan.decode(frames, np.full(len(rows), 8, np.uint8))
        [block] = blocks
        expected = [float(message.decode(bytes(row), decode_choices=False)[signal.name]) for row in frames]
        assert ok.all() and same_floats(block.values[:, 0], np.array(expected)), signal.name


def test_short_payloads_unknown_multiplexer_values_and_overflowing_layouts_fail_like_cantools(tmp_path):
    # GIVEN a multiplexed message with branches 0 and 1 only, and a message whose signal runs
    # past its end (loaded without strict: cantools' formats are longer than the payload)
    (tmp_path / "car.dbc").write_text("""VERSION ""
BO_ 256 Muxed: 4 X
 SG_ Sel M : 0|8@1+ (1,0) [0|0] "" Y
 SG_ A m0 : 8|16@1+ (0.5,0) [0|0] "" Y
 SG_ B m1 : 8|16@1- (1,0) [0|0] "" Y
BO_ 257 Overflowing: 2 X
 SG_ C : 12|8@1+ (1,0) [0|0] "" Y
""")
    decoder = DbcDecoder([tmp_path / "car.dbc"])
    frames = Frames.from_messages([
        frame(1.0, 256, b"\x00\x10\x00\x00"), frame(1.1, 256, b"\x02\x10\x00\x00"),  # 2: no such branch
        frame(1.2, 256, b"\x01\xff\xff"),  # short
        frame(1.3, 256, b"\x01\xff\xff\x00\x99"),  # longer: cut to 4 bytes
        frame(1.4, 257, b"\x01\x02"),
    ])
    vectorised = decoder.decode_frames(frames)
    # THEN what cantools refuses is a decode error, for its id, in both paths
    assert_same(vectorised, decoder.decode_each(frames))
    assert vectorised.decode_errors == {256: 2, 257: 1}
    assert vectorised.batch.columns()["Muxed.B"].v.tolist() == [-1.0]
    assert vectorised.fallback == 0 and decoder.fallback_messages == {}


def test_a_message_no_plan_expresses_is_decoded_by_cantools_and_counted(tmp_path):
    # GIVEN a 72-bit signal (bitstruct's C unpacker refuses it; the plan reads at most 64 bits)
    (tmp_path / "car.dbc").write_text("""VERSION ""
BO_ 256 Wide: 12 X
 SG_ Huge : 0|72@1+ (1,0) [0|0] "" Y
BO_ 257 Plain: 2 X
 SG_ P : 0|16@1+ (1,0) [0|0] "" Y
""")
    decoder = DbcDecoder([tmp_path / "car.dbc"])
    assert list(decoder.fallback_messages) == ["Wide"]
    frames = Frames.from_messages([frame(1.0, 256, bytes(12)), frame(1.1, 257, b"\x01\x00")])
    vectorised = decoder.decode_frames(frames)
    assert_same(vectorised, decoder.decode_each(frames))
    assert vectorised.fallback == 1  # one frame went to cantools
    assert vectorised.batch.columns()["Plain.P"].v.tolist() == [1.0]


def test_decode_of_python_can_frames_is_decode_frames(sample_dbc):
    decoder = DbcDecoder([sample_dbc])
    db = cantools.database.load_file(str(sample_dbc))
    cells = db.get_message_by_name("BMS_CellVoltages")
    messages = [frame(1.0, cells.frame_id, cells.encode({"Module": 1, "Cell04": 3.9, "Cell05": 3.95, "Cell06": 4.0})),
                frame(1.1, 0x7E0, b"\x01")]
    assert_same(decoder.decode(messages), decoder.decode_each(Frames.from_messages(messages)))


@pytest.mark.parametrize("log, dbc", [("drive.log", "solar_car.dbc")])
def test_every_log_of_the_repository_decodes_the_same_both_ways(log, dbc):
    from telemetry.tools.paths import SAMPLE  # not "from conftest": two conftest modules exist

    decoder = DbcDecoder([SAMPLE / dbc])
    read = [m for m in LogSource(SAMPLE / log).frames(threading.Event()) if m is not None]
    assert len(read) > 30000
    compared = 0
    for start in range(0, len(read), SAMPLE_LOG_BATCH):
        frames = Frames.from_messages(read[start:start + SAMPLE_LOG_BATCH])
        vectorised, each = decoder.decode_frames(frames), decoder.decode_each(frames)
        assert_same(vectorised, each)
        compared += len(each.batch)
    assert compared > 100000 and not decoder.fallback_messages


def test_ranks_follow_cantools_order_through_nested_multiplexers():
    # GIVEN cantools' extended multiplexing: a multiplexer selected by another one
    mux = Signal("Mux", 0, 2, is_multiplexer=True)
    inner = Signal("Inner", 8, 2, is_multiplexer=True, multiplexer_ids=[1], multiplexer_signal="Mux")
    a = Signal("A", 16, 8, multiplexer_ids=[0, 1], multiplexer_signal="Mux")
    b = Signal("B", 24, 8, multiplexer_ids=[2], multiplexer_signal="Inner")
    message = Message(0x10, "M", 4, [b, a, inner, mux], strict=True)
    plan = MessagePlan.compile(message)
    payloads = [bytes([1, 2, 3, 4]), bytes([0, 2, 3, 4]), bytes([1, 1, 3, 4])]
    data = np.array([list(p) for p in payloads], np.uint8)
    ok, blocks = plan.decode(np.pad(data, ((0, 0), (0, 4))), np.full(3, 4, np.uint8))
    # THEN the third frame (Inner = 1: no branch) fails, and the others list signals as cantools does
    assert ok.tolist() == [True, True, False]
    for row in (0, 1):
        present = sorted((rank, name) for block in blocks for name, rank in zip(block.names, block.ranks)
                         if row in block.rows.tolist())
        assert [name for _, name in present] == list(message.decode(payloads[row], decode_choices=False))


def test_windows_reach_every_byte_of_a_can_fd_payload():
    # GIVEN 64-bit signals at every bit offset of a 64-byte message, both byte orders
    payload = bytes((i * 37 + 11) % 256 for i in range(64))
    for start, order in itertools.product(range(0, 449, 7), ("little_endian", "big_endian")):
        message = Message(0x1, "M", 64, [Signal("S", start, 64, order, is_signed=start % 2 == 1)], strict=False)
        ok, blocks = MessagePlan.compile(message).decode(np.frombuffer(payload, np.uint8)[None, :], np.array([64]))
        try:
            expected = [float(message.decode(payload, decode_choices=False)["S"])]
        except Exception:
            assert not ok[0]
            continue
        assert blocks[0].values[:, 0].tolist() == expected, (start, order)


SPECIAL_BYTES = [
    bytes(8), b"\xff" * 8,  # all zero; all ones (NaN in every float width)
    b"\x00\x00\x80\x7f" * 2, b"\x00\x00\x80\xff" * 2,  # float32 +inf / -inf
    b"\x00\x00\x00\x00\x00\x00\xf0\x7f", b"\xff\xff\xff\xff\xff\xff\xef\x7f",  # float64 inf, max
    b"\x00\x00\x00\x00\x00\x00\x00\x80", b"\x01\x00\x00\x00\x00\x00\x00\x00",  # -0.0, the least subnormal
    b"\xff\xff\x7f\x7f" * 2,  # float32 max
]


@st.composite
def hostile_batches(draw, known: list[Message]) -> list[can.Message]:
    """Frames of many ids at once, payloads built of the bytes floats and sign bits make
    hard (NaN, infinities, the largest values, -0.0, all ones), with duplicate and unsorted times."""
    frames = []
    for _ in range(draw(st.integers(0, 60))):
        message = draw(st.sampled_from(known))
        size = draw(st.sampled_from([message.length, message.length, max(message.length - 1, 0), 8, 64]))
        pieces = draw(st.lists(st.sampled_from(SPECIAL_BYTES), min_size=8, max_size=8))
        data = b"".join(pieces)[:size]
        kind = draw(st.sampled_from(["known"] * 12 + ["unknown", "error", "remote"]))
        frames.append(can.Message(timestamp=draw(st.sampled_from([0.0, 1.0, 1.0, 2.5, float(2**40)])),
                                  arbitration_id=0x7FF if kind == "unknown" else message.frame_id,
                                  is_extended_id=message.is_extended_frame and kind != "unknown", data=data,
                                  is_fd=size > 8, is_error_frame=kind == "error", is_remote_frame=kind == "remote"))
    return frames


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_program_over_many_ids_equals_cantools_on_hostile_payloads(tmp_path_factory, data):
    # GIVEN up to five messages (floats likely, classic and CAN FD lengths, multiplexers) decoded
    # by one program, and batches of them all mixed: empty, one frame, short and long payloads,
    # NaN / infinite / huge float bits, times out of order and repeated
    ids = data.draw(st.lists(st.sampled_from([0x10, 0x11, 0x123, 0x7FE, 0x1ABCDE, 0x1ABCDF]), min_size=1, max_size=5,
                             unique=True))
    known = [data.draw(messages(frame_id, f"M{i}")) for i, frame_id in enumerate(ids)]
    decoder = decoder_for(tmp_path_factory, known)
    for _ in range(2):  # a second batch: the program's tables, grown by the first, are reused
        frames = Frames.from_messages(data.draw(hostile_batches(known)))
        vectorised, each = decoder.decode_frames(frames), decoder.decode_each(frames)
        # THEN the same as cantools frame by frame, dropped values counted per signal in the same order
        assert_same(vectorised, each)
        assert list(vectorised.non_finite_signals.items()) == list(each.non_finite_signals.items())
        assert vectorised.length_mismatch == each.length_mismatch  # per id, in the order ids first come
        counted = {name: len(rows) for name, rows in vectorised.event_rows.items()}
        assert counted == {name: n for name, n in vectorised.frames.items()
                           if name in ("error", "remote", "unknown_id", "decode_error")}


def test_an_id_both_standard_and_extended_is_counted_once_per_id_as_cantools_per_frame(tmp_path):
    # GIVEN a DBC with a standard and an extended frame of the same number, and frames of both,
    # of an unknown number in both forms, some short (decode errors), some longer (mismatch)
    (tmp_path / "car.dbc").write_text("""VERSION ""
BO_ 16 Std: 2 X
 SG_ A : 0|16@1+ (1,0) [0|0] "" Y
BO_ 2147483664 Ext: 2 X
 SG_ B : 0|16@1- (0.5,0) [0|0] "" Y
""")
    decoder = DbcDecoder([tmp_path / "car.dbc"])
    frames = Frames.from_messages([
        frame(1.0, 0x20, b"\x01"), frame(1.1, 0x10, b"\x01\x02", is_extended_id=True), frame(1.2, 0x10, b"\x01"),
        frame(1.3, 0x20, b"\x01", is_extended_id=True), frame(1.4, 0x10, b"\x01", is_extended_id=True),
        frame(1.5, 0x10, b"\x01\x02\x03"), frame(1.6, 0x10, b"\x01\x02\x03", is_extended_id=True),
    ])
    vectorised, each = decoder.decode_frames(frames), decoder.decode_each(frames)
    # THEN each number is counted once, both forms together, as cantools frame by frame counts it
    assert_same(vectorised, each)
    assert vectorised.unknown_ids == {0x20: 2}
    assert vectorised.decode_errors == {0x10: 2}
    assert vectorised.length_mismatch == each.length_mismatch == {0x10: 4}


def test_a_batch_run_a_slice_at_a_time_decodes_the_same(monkeypatch):
    # GIVEN the sample drive's first frames, and a program that takes at most 7 values a step
    from telemetry.tools.paths import SAMPLE  # not "from conftest": two conftest modules exist

    monkeypatch.setattr("telemetry.edge.plan._MOST_CELLS", 7)
    decoder = DbcDecoder([SAMPLE / "solar_car.dbc"])
    read = [m for m in itertools.islice(LogSource(SAMPLE / "drive.log").frames(threading.Event()), 3000) if m]
    frames = Frames.from_messages(read)
    # THEN the same as cantools frame by frame (multiplexed cells, every id of the car)
    decoded = decoder.decode_frames(frames)
    assert_same(decoded, decoder.decode_each(frames))
    assert len(decoded.batch) > 10000
