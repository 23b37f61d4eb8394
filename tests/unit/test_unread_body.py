"""worker/unread_body.py: when an answer must say `Connection: close` (the behaviour through a
real gunicorn is tested in tests/integration/test_limits.py)."""

import time
from types import SimpleNamespace

import pytest
from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
from gunicorn.http.parser import Parser
from gunicorn.http.unreader import IterUnreader

from worker.unread_body import DRAIN_MAX_BYTES, closing_after_unread_bodies, left_undrainable


def length_body(size: int, lines: bool = False) -> Body:
    data = (b"x" * 99 + b"\n") * (size // 100) + b"x" * (size % 100) if lines else b"x" * size
    return Body(LengthReader(IterUnreader([data]), size))


def gunicorn_keeps(body: Body) -> bool:
    """What gthread does with the rest of `body` before the next request: True if it drains it."""
    parser = SimpleNamespace(mesg=SimpleNamespace(body=body), unreader=SimpleNamespace())
    return Parser.finish_body(parser, deadline=time.monotonic() + 5)


@pytest.mark.parametrize("left", [0, 1, 1000, DRAIN_MAX_BYTES - 1, DRAIN_MAX_BYTES,
                                  DRAIN_MAX_BYTES + 1, 4 * DRAIN_MAX_BYTES])
@pytest.mark.parametrize("first", [1024, 100])
def test_the_answer_matches_what_gunicorn_will_do(left, first):
    """`left` bytes unread after the `first`: a read of 1 KiB (what the body asks its reader for
    at least) leaves none of them in the body's own buffer, a line of 100 leaves 924."""
    body = length_body(first + left, lines=True)
    assert len(body.read(1024) if first == 1024 else body.readline()) == first
    assert body.buf.tell() == (min(924, left) if first == 100 else 0)
    closes = left_undrainable(body)
    assert closes is not gunicorn_keeps(body), (left, first, closes)


def test_what_gunicorn_would_discard_keeps_the_connection():
    assert not left_undrainable(length_body(DRAIN_MAX_BYTES - 1))
    assert left_undrainable(length_body(DRAIN_MAX_BYTES))
    body = length_body(3 * DRAIN_MAX_BYTES)
    body.read(2 * DRAIN_MAX_BYTES)
    assert left_undrainable(body)
    body.read(DRAIN_MAX_BYTES // 2)
    assert not left_undrainable(body)


def test_a_chunked_body_counts_until_its_end_was_read():
    class Req:  # what ChunkedReader asks of its request
        limit_request_field_size = max_buffer_headers = 0
        trailers = None
    body = Body(ChunkedReader(Req(), IterUnreader([b"3\r\nabc\r\n0\r\n\r\n"])))
    assert left_undrainable(body)
    assert body.read() == b"abc"
    assert not left_undrainable(body)


def test_a_failed_body_counts_and_anything_else_does_not():
    body = length_body(10)
    body.failed = True
    assert left_undrainable(body)
    assert not left_undrainable(Body(EOFReader(IterUnreader([b"x"]))))
    assert not left_undrainable(None)


def test_only_gunicorns_response_is_told_to_close():
    class Response:
        closed = False

        def force_close(self):
            self.closed = True

        def start_response(self, status, headers):
            pass

    def app(environ, start_response):
        start_response("413 REQUEST ENTITY TOO LARGE", [])
        return [b"{}"]

    wrapped = closing_after_unread_bodies(app)
    response = Response()
    assert wrapped({"wsgi.input": length_body(DRAIN_MAX_BYTES)}, response.start_response) == [b"{}"]
    assert response.closed
    response = Response()
    wrapped({"wsgi.input": length_body(10)}, response.start_response)
    assert not response.closed
    wrapped({"wsgi.input": length_body(DRAIN_MAX_BYTES)}, lambda status, headers: None)  # no error
