"""Issue 11, points 10-12: DBC files as real vehicles have them.

10: two messages of one name never feed one column; a signal name twice in a message is refused.
11: Vector CANdb++ DBCs (VECTOR__INDEPENDENT_SIG_MSG, long names) load, truly dropped lines do not.
12: J1939 messages match on the PGN, the source address kept in the name.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cantools
import pytest

from telemetry.edge.decode import DbcDecoder, load_dbc
from telemetry.edge.errors import DbcError
from telemetry.edge.frames import Frames
from telemetry.edge.sources import LogSource

DATA = Path(__file__).parent / "data"

HEADER = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'


def write(path: Path, body: str) -> Path:
    path.write_text(HEADER + body)
    return path


def columns(decoder: DbcDecoder, frames: Frames) -> dict[str, list[float]]:
    batch = decoder.decode_frames(frames).batch
    return {name: batch.v[batch.ids == i].tolist() for i, name in enumerate(batch.names)}


def frames_of(*rows: tuple[int, bytes]) -> Frames:
    import can
    return Frames.from_messages([can.Message(timestamp=float(i), arbitration_id=frame_id, data=data,
                                             is_extended_id=frame_id > 0x7FF) for i, (frame_id, data) in enumerate(rows)])


# -- 10: names ------------------------------------------------------------------------------------------


def test_two_dbcs_with_a_message_of_the_same_name_feed_two_columns(tmp_path):
    # GIVEN two buses' DBCs that both call a message "Status", with different scales
    a = write(tmp_path / "a.dbc", 'BO_ 256 Status: 8 ECU\n SG_ Value : 0|16@1+ (1,0) [0|0] "" ECU\n')
    b = write(tmp_path / "b.dbc", 'BO_ 512 Status: 8 ECU\n SG_ Value : 0|16@1+ (0.01,0) [0|0] "" ECU\n')
    decoder = DbcDecoder([a, b])
    # WHEN a frame of each is decoded
    got = columns(decoder, frames_of((0x100, b"\x64\x00" + bytes(6)), (0x200, b"\x64\x00" + bytes(6))))
    # THEN each has its own column, named by its frame id, and the renaming is reported
    assert got == {"Status@0x100.Value": [100.0], "Status@0x200.Value": [1.0]}
    assert len(decoder.renamed) == 2 and all("Status" in r for r in decoder.renamed)


def test_one_dbc_with_two_messages_of_the_same_name_feeds_two_columns(tmp_path):
    dbc = write(tmp_path / "a.dbc", 'BO_ 256 Status: 8 ECU\n SG_ Value : 0|8@1+ (1,0) [0|0] "" ECU\n\n'
                                    'BO_ 257 Status: 8 ECU\n SG_ Value : 0|8@1+ (2,0) [0|0] "" ECU\n')
    decoder = DbcDecoder([dbc])
    got = columns(decoder, frames_of((0x100, b"\x03" + bytes(7)), (0x101, b"\x03" + bytes(7))))
    assert got == {"Status@0x100.Value": [3.0], "Status@0x101.Value": [6.0]}


def test_a_signal_name_twice_in_one_message_is_refused_with_both_lines(tmp_path):
    dbc = write(tmp_path / "a.dbc", 'BO_ 256 Status: 8 ECU\n SG_ Value : 0|8@1+ (1,0) [0|0] "" ECU\n'
                                    ' SG_ Value : 8|8@1+ (1,0) [0|0] "" ECU\n')
    with pytest.raises(DbcError, match=r"Status defines signal Value twice \(first on line 10\)"):
        DbcDecoder([dbc])


# -- 11: Vector CANdb++ ---------------------------------------------------------------------------------

VECTOR = '''BO_ 256 Short_Msg: 8 ECU
 SG_ Short_Sig : 0|16@1+ (1,0) [0|65535] "" ECU
 SG_ Other : 16|8@1+ (0.5,0) [0|255] "" ECU

BO_ 3221225472 VECTOR__INDEPENDENT_SIG_MSG: 0 Vector__XXX
 SG_ Orphan : 0|8@1+ (1,0) [0|0] "" Vector__XXX

BA_DEF_ BO_  "SystemMessageLongSymbol" STRING ;
BA_DEF_ SG_  "SystemSignalLongSymbol" STRING ;
BA_DEF_DEF_  "SystemMessageLongSymbol" "";
BA_DEF_DEF_  "SystemSignalLongSymbol" "";
BA_ "SystemMessageLongSymbol" BO_ 256 "A_Message_Name_Longer_Than_Thirty_Two_Characters";
BA_ "SystemSignalLongSymbol" SG_ 256 Short_Sig "A_Signal_Name_Longer_Than_Thirty_Two_Characters";
'''


def test_a_vector_candb_export_loads_and_decodes_with_cantools_long_names(tmp_path):
    dbc = write(tmp_path / "vector.dbc", VECTOR)
    decoder = DbcDecoder([dbc])
    got = columns(decoder, frames_of((0x100, b"\x34\x12\x08" + bytes(5))))
    message = cantools.database.load_file(str(dbc)).get_message_by_frame_id(0x100)
    want = {f"{message.name}.{k}": [float(v)] for k, v in message.decode(b"\x34\x12\x08" + bytes(5)).items()}
    assert got == want
    assert "A_Message_Name_Longer_Than_Thirty_Two_Characters.A_Signal_Name_Longer_Than_Thirty_Two_Characters" in got
    # AND a signal line cantools truly drops (without receivers: skipped without a word) is still refused
    dbc = write(tmp_path / "vector.dbc", VECTOR + '\nBO_ 512 Late: 8 ECU\n SG_ Dropped : 0|8@1+ (1,0) [0|1] ""\n')
    with pytest.raises(DbcError, match="signal not understood"):
        load_dbc(dbc)


# -- 12: J1939 ------------------------------------------------------------------------------------------


def test_j1939_messages_match_on_the_pgn_and_keep_the_source_address():
    # GIVEN a J1939 DBC (EEC1 from source address 0xFE, CCVS1 from 0x17) and a log of the same
    # PGNs from other source addresses and priorities
    dbc = DATA / "j1939.dbc"
    decoder = DbcDecoder([dbc])
    source = LogSource(DATA / "j1939.log")
    frames = Frames.concat(list(source.frame_batches(threading.Event())))
    decoded = decoder.decode_frames(frames)
    got = columns(decoder, frames)
    # THEN every frame of a known PGN decodes, named by its source address, values as cantools'
    db = cantools.database.load_file(str(dbc))
    eec1, ccvs1 = db.get_message_by_name("EEC1"), db.get_message_by_name("CCVS1")

    def value(message, row, signal):
        return float(message.decode(bytes(frames.data[row, :8]))[signal])

    assert got["EEC1@sa00.EngineSpeed"] == [value(eec1, 0, "EngineSpeed"), value(eec1, 3, "EngineSpeed")]
    assert got["EEC1@sa03.EngineSpeed"] == [value(eec1, 1, "EngineSpeed")]
    assert got["EEC1@saFE.EngineSpeed"] == [value(eec1, 4, "EngineSpeed")]
    assert got["CCVS1@sa00.WheelBasedVehicleSpeed"] == [value(ccvs1, 2, "WheelBasedVehicleSpeed")]
    assert got["BodyStatus.DoorOpen"] == [1.0]  # a plain CAN message of the same DBC, as before
    # an unknown PGN stays unknown
    assert decoded.frames["decoded"] == 6 and decoded.frames["unknown_id"] == 1
    each = decoder.decode_each(frames)
    assert each.batch.names == decoded.batch.names and each.batch.v.tolist() == decoded.batch.v.tolist()
    # and a rule pattern on the template is known to match (not reported as matching nothing)
    assert decoder.matches("EEC1@*.EngineSpeed") and decoder.matches("EEC1@sa03.*")
    assert not decoder.matches("EEC2*")


def test_the_protocol_type_attribute_alone_marks_a_dbc_j1939(tmp_path):
    text = (DATA / "j1939.dbc").read_text()
    text = "\n".join(line for line in text.splitlines() if "VFrameFormat" not in line)
    dbc = tmp_path / "protocol_only.dbc"
    dbc.write_text(text)
    got = columns(DbcDecoder([dbc]), frames_of((0x0CF00405, bytes.fromhex("FFFF7D4038FFFFFF"))))
    assert set(got) == {"EEC1@sa05.ActualEnginePercentTorque", "EEC1@sa05.EngineSpeed"}
