"""DBC decoding: multiplexing, extended ids, collisions, and frames that cannot be decoded."""

from __future__ import annotations

import cantools
import pytest

from support.helpers import frame
from telemetry.edge.decode import DbcDecoder, load_dbc
from telemetry.edge.errors import DbcError
from telemetry.edge.frames import Frames

TWO = """VERSION ""
BO_ 256 Second: 2 X
 SG_ Other : 0|16@1+ (0.5,0) [0|100] "" Y
"""


def test_decodes_scaled_values_multiplexed_and_extended(sample_dbc):
    db = cantools.database.load_file(str(sample_dbc))
    cells = db.get_message_by_name("BMS_CellVoltages")
    gps = db.get_message_by_name("GPS_Position")
    frames = [
        frame(1.0, cells.frame_id, cells.encode({"Module": 1, "Cell04": 3.9, "Cell05": 3.95, "Cell06": 4.0})),
        frame(1.1, cells.frame_id, cells.encode({"Module": 2, "Cell07": 3.5, "Cell08": 3.6, "Cell09": 3.7})),
        frame(1.2, gps.frame_id, gps.encode({"Latitude": -33.9, "Longitude": 151.2}), is_extended_id=True),
    ]
    batch = DbcDecoder([sample_dbc]).decode(frames)
    assert batch.frames["decoded"] == 3
    # only the signals of the active multiplexer value are present; the selector itself is a signal
    assert batch.batch.columns()["BMS_CellVoltages.Module"].v.tolist() == [1, 2]
    assert batch.batch.columns()["BMS_CellVoltages.Cell04"].t.tolist() == [1.0]
    assert batch.batch.columns()["BMS_CellVoltages.Cell04"].v[0] == pytest.approx(3.9)
    assert "BMS_CellVoltages.Cell01" not in batch.batch.columns()
    assert batch.batch.columns()["BMS_CellVoltages.Cell09"].v[0] == pytest.approx(3.7)
    assert batch.batch.columns()["GPS_Position.Latitude"].v[0] == pytest.approx(-33.9)
    assert batch.samples == 4 + 4 + 2
    # flat columns: one signal's samples contiguous and in time order, names as first seen
    flat = batch.batch
    assert (flat.ids[1:] >= flat.ids[:-1]).all() and flat.names[0] == "BMS_CellVoltages.Module"


def test_choices_are_numbers_not_names(sample_dbc):
    db = cantools.database.load_file(str(sample_dbc))
    dc = db.get_message_by_name("DriverControls")
    data = dc.encode({"Throttle": 10, "Regen": 0, "Brake": 0, "Gear": 2, "CruiseOn": 0})
    batch = DbcDecoder([sample_dbc]).decode([frame(1.0, dc.frame_id, data)])
    assert batch.batch.columns()["DriverControls.Gear"].v.tolist() == [2.0]


def test_error_remote_unknown_and_undecodable_frames_are_counted(sample_dbc):
    frames = [
        frame(1.0, 0x20000004, bytes(8), is_error_frame=True, is_extended_id=True),
        frame(1.1, 0x100, is_remote_frame=True, dlc=8),
        frame(1.2, 0x7E0, b"\x01\x02"),
        frame(1.3, 0x7E0, b"\x01\x02"),
        frame(1.4, 0x100, b"\x01"),  # BMS_PackStatus needs 8 bytes
        frame(1.5, 0x100, bytes(8), is_extended_id=True),  # same number, but a 29-bit id: unknown
        frame(1.6, 0x100, bytes(8)),
    ]
    batch = DbcDecoder([sample_dbc]).decode(frames)
    assert dict(batch.frames) == {"read": 7, "error": 1, "remote": 1, "unknown_id": 3, "decode_error": 1, "decoded": 1}
    assert batch.unknown_ids == {0x7E0: 2, 0x100: 1}
    assert batch.decode_errors == {0x100: 1}
    assert batch.batch.columns()["BMS_PackStatus.PackVoltage"].t.tolist() == [1.6]


def test_later_dbc_wins_on_collision_and_it_is_reported_once(tmp_path, sample_dbc):
    second = tmp_path / "second.dbc"
    second.write_text(TWO)
    decoder = DbcDecoder([sample_dbc, second])
    assert len(decoder.collisions) == 1
    assert "second.dbc:Second replaces solar_car.dbc:BMS_PackStatus" in str(decoder.collisions[0])
    batch = decoder.decode([frame(1.0, 0x100, b"\x0a\x00"), frame(2.0, 0x100, b"\x0b\x00")])
    assert set(batch.batch.columns()) == {"Second.Other"}
    assert batch.batch.columns()["Second.Other"].v.tolist() == [5.0, 5.5]
    assert len(decoder.collisions) == 1


@pytest.mark.parametrize(
    "text, problem",
    [
        ("BO_ 256 Broken: 8 X\n SG_ A : 0|16@1+ (1,0) [0|1] \"\" Y\n SG_ B : oops\n", "not a valid DBC file"),
        ("VERSION \"\"\n", "DBC file defines no messages"),
    ],
)
def test_a_dbc_that_does_not_load_names_the_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "car.dbc"
    path.write_text(text)
    with pytest.raises(DbcError) as err:
        load_dbc(path)
    assert str(err.value).startswith(f"{path}: {problem}")


def test_missing_dbc(tmp_path):
    with pytest.raises(DbcError, match="not found"):
        DbcDecoder([tmp_path / "nope.dbc"])


def test_a_dbc_is_parsed_once_a_process_until_its_content_changes(tmp_path, monkeypatch):
    """The local runtime's components, report and rule check all read the vehicle's DBC: one
    parse. A file rewritten (here with the same size, in the same instant) is parsed again, and a
    broken file is refused every time it is read, not remembered."""
    calls = []
    real = cantools.database.load_string

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cantools.database, "load_string", counting)
    path = tmp_path / "car.dbc"
    path.write_text(TWO)
    first = load_dbc(path)
    assert load_dbc(path) is first and load_dbc(str(path)) is first
    assert len(calls) == 1
    path.write_text(TWO.replace("Other", "Otter"))  # same size
    assert [s.name for s in load_dbc(path).messages[0].signals] == ["Otter"]
    assert len(calls) == 2
    path.write_text(TWO.replace("0|16@1+", "oops!!!"))
    for _ in range(2):
        with pytest.raises(DbcError, match="not a valid DBC file"):
            load_dbc(path)
    assert len(calls) == 4
    path.write_text(TWO)
    assert load_dbc(path) is first  # the same content again: the one parse of it
    assert len(calls) == 4


def test_ids_no_dbc_knows_are_counted_not_remembered(sample_dbc):
    """A bus or a log of random ids (noise, a hostile device) must not grow the reader: each
    batch counts them, the decoder keeps nothing of them."""
    decoder = DbcDecoder([sample_dbc])
    gps = cantools.database.load_file(str(sample_dbc)).get_message_by_name("GPS_Position")
    known = decoder.decode_frames(Frames.from_messages([frame(1.0, gps.frame_id, gps.encode(
        {"Latitude": -33.9, "Longitude": 151.2}), is_extended_id=True)]))
    remembered = len(decoder._slots)
    for start in range(0, 20_000, 5_000):
        ids = range(0x10000000 + start, 0x10000000 + start + 5_000)
        out = decoder.decode_frames(Frames.from_messages([frame(1.0, i, bytes(8)) for i in ids]))
        assert out.frames["unknown_id"] == 5_000 and len(out.unknown_ids) == 5_000
    assert len(decoder._slots) == remembered
    assert known.frames["decoded"] == 1
