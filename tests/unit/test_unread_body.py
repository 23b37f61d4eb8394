"""worker/unread_body.py: when an answer must say `Connection: close` (the behaviour through a
real gunicorn is tested in tests/integration/test_limits.py)."""

from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
from gunicorn.http.unreader import IterUnreader

from worker.unread_body import DRAIN_MAX_BYTES, closing_after_unread_bodies, left_undrainable


def length_body(size: int) -> Body:
    return Body(LengthReader(IterUnreader([b"x" * size]), size))


def test_what_gunicorn_would_discard_keeps_the_connection():
    assert not left_undrainable(length_body(DRAIN_MAX_BYTES - 1))
    assert left_undrainable(length_body(DRAIN_MAX_BYTES))
    body = length_body(3 * DRAIN_MAX_BYTES)
    body.read(2 * DRAIN_MAX_BYTES)
    assert left_undrainable(body)
    body.read(DRAIN_MAX_BYTES // 2)  # what is left, buffered or not, is what counts
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
