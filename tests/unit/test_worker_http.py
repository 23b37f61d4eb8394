"""Run frames as the controller parses them, whatever pieces the network cuts them into.
(The worker that writes them, and the connections, are tested for real in
tests/integration/test_worker_transport.py.)"""

from __future__ import annotations

import json

import pytest

from trigger_server import worker_http


class Pieces:
    """Hands out a body in the pieces given, as http.client's read1 would."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)

    def read1(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def body(*frames: bytes | dict | str) -> bytes:
    out = b""
    for f in frames:
        if isinstance(f, bytes):
            out += b"log %d\n" % len(f) + f
        elif isinstance(f, dict):
            out += b"end " + json.dumps(f).encode() + b"\n"
        else:
            out += f.encode() + b"\n"
    return out


END = {"state": "succeeded", "exit_code": 0, "log_size": 11}


def collect(pieces: list[bytes]) -> tuple[bytes, list]:
    log, ends = b"", []
    for item in worker_http.frames(Pieces(pieces)):
        if isinstance(item, dict):
            ends.append(item)
        else:
            assert not ends, "log after the end"
            log += item
    return log, ends


def test_frames_cut_anywhere_give_the_same_log_and_end():
    raw = body('run {"id": "a"}', b"hello\n", "tick", b"", b"world\n", END)
    for size in (1, 2, 3, 7, 64, len(raw)):
        log, ends = collect([raw[i:i + size] for i in range(0, len(raw), size)])
        assert log == b"hello\nworld\n"
        assert ends == [END]


def test_log_frames_already_received_are_merged_up_to_the_limit(monkeypatch):
    monkeypatch.setattr(worker_http, "MERGE_LIMIT", 10)
    items = list(worker_http.frames(Pieces([body(b"abcd", b"efgh", b"ijkl", b"mn", END)])))
    assert items == [b"abcdefghijkl", b"mn", END]


def test_a_body_cut_short_ends_without_an_end_state():
    raw = body(b"hello\n", b"partial")
    log, ends = collect([raw[:-3]])
    assert log == b"hello\n" and ends == []


def test_an_unknown_frame_is_an_error_not_log_text():
    with pytest.raises(worker_http.Broken, match="unexpected frame"):
        collect([b"log 2\nok", b"<html>oops</html>\n"])
