"""The candump parser's first dot and first "#" of a line taken where the block's first line has
them, against the parser as it was (``support.logparse_before``): the same frames, the same bad
records and the same count of lines left to python-can, for lines of any layout: timestamps of
other widths or with a second dot, ids of other lengths, "#" and "##" in odd places, lines cut
short, blank and foreign lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from support.logparse_before import CandumpBefore
from telemetry.edge.frames import Frames
from telemetry.edge.logparse import ParseCounts, _Block, _Candump, _LineReader, _starts_with

FIELDS = ("t", "id", "extended", "error", "remote", "fd", "length", "data")

digits = st.text("0123456789", min_size=0, max_size=12)
hexes = st.text("0123456789abcdefABCDEF", min_size=0, max_size=10)
stamp = st.one_of(st.just("1782900000.003379"), st.builds(lambda a, b: f"{a}.{b}", digits, digits),
                  st.builds(lambda a, b, c: f"{a}.{b}.{c}", digits, digits, digits), digits, st.just("1.5"))
can_id = st.one_of(st.sampled_from(["100", "1AB", "18FF50E5", "7ff", "1FFFFFFF", "20000080"]), hexes,
                   st.text("0123456789ABC#", max_size=9))
body = st.one_of(st.sampled_from(["003990FDA4010000", "", "R", "R5", "#1", "#0AABB", "##", "#R", "11#22", "1"]),
                 hexes, st.text("0123456789ABCDEFR#", max_size=18))
line = st.one_of(
    st.builds(lambda t, i, d, end: f"({t}) can0 {i}#{d}{end}", stamp, can_id, body,
              st.sampled_from(["", " R", " T", " x", "  R", " R extra"])),
    st.builds(lambda t, bus, rest: f"({t}) {bus} {rest}", stamp, st.sampled_from(["can0", "vcan0", "c", "a.b"]),
              st.text("0123456789ABC#R .", max_size=24)),
    st.sampled_from(["", "   ", "# a comment", "(1.0) can0", "(1.0)", "garbage"]),
)


def parse(parser_type: type, path: Path, chunk_frames: int) -> tuple[Frames, list, ParseCounts]:
    bad: list = []
    counts = ParseCounts()
    parser = parser_type(path, bad, counts)
    with open(path, "rb") as file:
        chunks = list(parser.body(_LineReader(file, chunk_frames), 0, chunk_frames))
    return Frames.concat(chunks) if chunks else Frames.empty(), bad, counts


def assert_read_as_before(path: Path, chunk_frames: int, bits: bool = False) -> None:
    """The candump parser reads ``path`` as the frozen reference does: every column (the times
    bit for bit too, with ``bits``), every bad line and the counts."""
    got, got_bad, got_counts = parse(_Candump, path, chunk_frames)
    want, want_bad, want_counts = parse(CandumpBefore, path, chunk_frames)
    assert len(got) == len(want)
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    if bits:
        assert np.array_equal(got.t.view(np.uint64), want.t.view(np.uint64))
    assert got_bad == want_bad
    assert got_counts == want_counts


@settings(max_examples=150, deadline=None)
@given(st.lists(line, min_size=1, max_size=30), st.integers(1, 12), st.booleans())
@example(["(123456.1) can0 100#00", "(1.5) a.b 100#00"], 5, True)  # the first line's dot place: past the token here
@example(["(1.0) can0 100#00", "(1.0) can0 12##311", "(1.0) can0 1#2#3", "(1.0) can0 18FF50E5#R"], 5, True)
def test_candump_lines_are_read_as_before(tmp_path_factory, lines, chunk_frames, newline_at_end):
    path = tmp_path_factory.mktemp("log") / "x.log"
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    assert_read_as_before(path, chunk_frames)


# Lines of the common layout ``_Candump.layout`` reads without tokens, and every way to leave it.
ts = st.one_of(st.sampled_from(["1782900000.003379", "0.5", "12.250000", "9007199254740993.0", "9007199254740992.0",
                                "900719925474099.3", "9007199254740991.9", "1782900000123456789.123456789", "5.",
                                ".5", "1.2.3", "1e3", "99999999999999999999.99"]),
               st.builds(lambda a, b: f"{a}.{b}", digits, digits))
layout_id = st.one_of(st.sampled_from(["100", "7FF", "7ff", "18FF50E5", "20000080", "1FFFFFFF", "FFFFFFFF", "1ABCDEF",
                                       "123456789", "12", "1g0", "10 0"]), hexes)
payload = st.one_of(st.text("0123456789abcdefABCDEF", max_size=18).filter(lambda d: len(d) % 2 == 0),
                    st.sampled_from(["", "R", "r", "#1", "##", "##100", "0", "00112233445566778", "0g", "00 ",
                                     "00112233445566778899AABBCCDDEEFF"]))
ending = st.sampled_from(["", " R", " T", " r", " t", " x", "  R", "\tR", " R ", " RT", " "])
bus = st.sampled_from(["can0", "can0", "can0", "vcan0", "c", "a_very_long_bus_name_of_30_chars", "ca\u00e9n0", "can0\t",
                       "can1", "c\u00e9n", "ca\tn", "can2", "can3", "can4", "can5"])  # of the first line's width too
layout_line = st.builds(lambda t, b, i, d, end: f"({t}) {b} {i}#{d}{end}", ts, bus, layout_id, payload, ending)
odd_line = st.sampled_from(["", " ", "\t", "# comment", "(1.0) can0", "( 1.0) can0 100#00", "(1.0)  can0 100#00",
                            "(1.0) can0 100#00\x00", "(1.0) can0 100#00\u00e9", "((1.0) can0 100#00",
                            "(1.0)) can0 100#00", "(1.0)can0 100#00", "\u00e9(1.0) can0 100#00"])
newline = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(layout_line, layout_line, odd_line), newline), min_size=1, max_size=40),
       st.integers(1, 12), st.booleans())
@example([("(1.0) can0 100#0011 R", "\n"), ("(1.0) vcan0 100#00", "\n"), ("(1.0) can0 20000080#00", "\n")], 2, True)
@example([("(9007199254740993.0) can0 100#00", "\n"), ("(9007199254740992.0) can0 100#00", "\n")], 5, False)
@example([("(1.0) can0 100#00", "\n"), ("(1.0) can1 100#01", "\n"), ("(1.0) c\u00e9n 100#02", "\n"),
          ("(1.0) ca\tn 100#03", "\n"), ("(1.0) vcan0 20000080#", "\n"), ("(1.0) can2 1#", "\n"), ("(1.0) can3 2#", "\n"),
          ("(1.0) can4 3#", "\n"), ("(1.0) can5 4#", "\n"), ("(1.0) can1 5#", "\n")], 12, True)  # six buses, odd ones
def test_candump_layout_lines_are_read_as_before(tmp_path_factory, lines, chunk_frames, newline_at_end):
    path = tmp_path_factory.mktemp("log") / "x.log"
    text = "".join(line + end for line, end in lines)
    if not newline_at_end:
        text = text.rstrip("\r\n")  # a cut last line
    path.write_bytes(text.encode())
    assert_read_as_before(path, chunk_frames, bits=True)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=40), st.data(), st.booleans())
@example(b"(1.0) vcan0 100#00\n", None, False)
def test_starts_with_reads_words_as_bytes(raw, data, fold):
    """``_starts_with`` of texts up to 8 bytes (read as 64-bit words, masked) says what a byte by
    byte comparison says, at every place of a block and just outside it (bytes there are 0)."""
    block = _Block(np.frombuffer(raw, np.uint8))
    starts = np.arange(-8, len(raw) + 2)
    if data is None:
        text = b" vcan0 "
    else:
        text = data.draw(st.one_of(st.binary(min_size=1, max_size=8),
                                   st.builds(lambda i, n: raw[i:i + n], st.integers(0, 40), st.integers(1, 8))
                                   .filter(bool)))
        if fold:
            text = bytes(c | 32 for c in text)
    padded = bytes(8) + raw + bytes(16)

    def byte(c: int) -> int:
        return c | 32 if fold else c

    want = [all(byte(padded[8 + s + k]) == text[k] for k in range(len(text))) for s in starts.tolist()]
    assert _starts_with(block, starts, text, fold).tolist() == want
