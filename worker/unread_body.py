"""`Connection: close` on an answer that leaves more of the request's body unread than gunicorn
will discard: WSGI middleware for both apps (their `create_app`).

Before it serves the next request on a kept-alive connection, gunicorn's gthread reads and
discards what the application left of the last body, but only while that is under 64 KiB: with
64 KiB or more left, it closes the connection after the answer, an answer that said
`Connection: keep-alive`. A client that sends its next request on that connection before the
close reaches it (a `requests.Session`, any keep-alive pool) gets "connection aborted" for a
request the server never read. With the default TRIGGER_MAX_BODY of 64 KiB that was every 413
to a body with a Content-Length (werkzeug reads none of one over the limit), and a 401 or 404
to a large body. An answer that says `Connection: close` makes the client open a new
connection instead.
"""

from __future__ import annotations

from gunicorn.http import body as gunicorn_body
from gunicorn.http import parser as gunicorn_parser

# what gunicorn 23+ discards at most before it gives up on a connection
DRAIN_MAX_BYTES = getattr(gunicorn_parser, "_DRAIN_MAX_BYTES", 64 * 1024)


def left_undrainable(body) -> bool:
    """Whether gunicorn will close the connection rather than discard what is left of `body`
    (the request's `wsgi.input`). A chunked body whose end was not read counts: its size is
    unknown until read."""
    if not isinstance(body, gunicorn_body.Body):
        return False
    if getattr(body, "failed", False):  # (as gunicorn reads it: older ones lack it)
        return True
    reader = body.reader
    if isinstance(reader, gunicorn_body.LengthReader):
        return body.buf.tell() + reader.length >= DRAIN_MAX_BYTES
    if isinstance(reader, gunicorn_body.ChunkedReader):
        return reader.parser is not None
    return False  # (an EOFReader: a request never has one, gunicorn makes it a LengthReader(0))


def closing_after_unread_bodies(app):
    """`app`, telling gunicorn to close (and to say so) when it leaves such a body unread.

    gunicorn's `start_response` is a method of its response, whose `force_close` is read when
    the headers go out: at the first write of the body, after `app` has returned (Flask calls
    `start_response` before it returns). Under gunicorn's sync worker every connection closes
    anyway; its gevent and eventlet workers discard a whole body, so there this closes a
    connection that could have been kept. Under another server nothing changes."""

    def wsgi(environ, start_response):
        answer = app(environ, start_response)
        response = getattr(start_response, "__self__", None)
        if hasattr(response, "force_close") and left_undrainable(environ.get("wsgi.input")):
            response.force_close()
        return answer

    return wsgi
