"""Requests that hold a server thread a while (a `wait`, a followed log, a stored log over
LOG_CHUNK sent in pieces): the bound on
how many may (WaitSlots), telling a client that has hung up, and following a job's log as plain
text or server-sent events until the job ends."""

from __future__ import annotations

import errno
import json
import threading
import time

from flask import Response, request, stream_with_context

from worker.serving import hung_up

from .store import StoreError

LOG_CHUNK = 256 * 1024
KEEPALIVE = 15.0  # seconds between SSE comments while a followed log is quiet
QUIET_CHECK = 5.0  # seconds between looks at whether the client of a quiet request has gone


class TooBusy(Exception):
    """Too many requests are already holding a thread while they wait."""


class WaitSlots:
    """Bounds how many requests may hold a server thread while they wait or follow a log."""

    def __init__(self, size: int):
        self._sem = threading.BoundedSemaphore(size)

    def take(self) -> None:
        if not self._sem.acquire(blocking=False):
            raise TooBusy("too many requests are waiting already; retry later, or poll "
                          "GET /jobs/<id> instead of waiting")

    def give(self) -> None:
        self._sem.release()


def hang_up_check():
    """A check for the current request's client having gone, usable after the request."""
    sock = request.environ.get("gunicorn.socket")
    return lambda: hung_up(sock)


def streamed(chunks, slots: WaitSlots, **response) -> Response:
    """A response that streams `chunks` and gives back the wait slot its request took once it
    is closed. The server closes every response it was given, also one whose body it never
    reads: werkzeug answers a HEAD without starting the generator, so a `finally` in it never
    ran, and each HEAD of a followed (or long) log kept a slot for good."""
    lock = threading.Lock()

    def give() -> None:
        if lock.acquire(blocking=False):  # once
            slots.give()
    try:
        resp = Response(stream_with_context(chunks), **response)
        resp.call_on_close(give)
    except BaseException:
        give()
        raise
    return resp


def stored_log(store, job_id: int, offset: int, end: int, first: bytes):
    """The stored log from `offset` up to `end`, in pieces of LOG_CHUNK (`first` read already):
    a client reading a 100 MB log slowly holds one piece in memory, not the whole log."""
    data = first
    while data:
        yield data
        offset += len(data)
        if offset >= end:
            return
        data = store.read_log(job_id, offset, min(LOG_CHUNK, end - offset))


def follow_log(store, dispatcher, tail, job_id: int, offset: int, sse: bool, gone):
    """The log from `offset` as it grows, until the job has ended and all of it is sent, or
    the client has gone. What was just stored comes from memory (log_tail.py), the rest from
    the database."""
    tail.follow(job_id)
    try:
        yield from _follow_stored(store, dispatcher, tail, job_id, offset, sse, gone)
    finally:
        tail.unfollow(job_id)


class StreamCut(ConnectionResetError):
    """Raised by a plain-text follow when the server stops before its job has ended: gunicorn
    takes a connection reset for a client gone (logged at debug) and closes the connection
    without the last chunk of the chunked body, so that curl exits 18 ("transfer closed with
    outstanding read data remaining") instead of 0, and a proxy that speaks HTTP/1.1 to the
    controller passes the cut on (over HTTP/1.0 there is no chunking: the close looks like an
    end). Ending the body normally made a follow that a restart cut short look like a build
    that had ended."""

    def __init__(self):
        super().__init__(errno.ECONNRESET, "the server is stopping before the job's end: "
                         "follow again (from the offset reached) once it is back")


def _follow_stored(store, dispatcher, tail, job_id: int, offset: int, sse: bool, gone):
    from_store = False
    # The wake-ups below come with any job's log or state, so the looks at the client and the
    # keepalives keep their own clocks.
    next_look = sent = time.monotonic()
    while not dispatcher.closing:  # the server is stopping (the job goes on: follow again)
        version = dispatcher.log_version
        data = None if from_store else tail.read(job_id, offset, LOG_CHUNK)
        if data is None:
            data = store.read_log(job_id, offset, LOG_CHUNK)
        from_store = False
        if data:
            if sse:
                text, used = _utf8_prefix(data)
                if used:
                    offset += used
                    yield _sse_event(text, offset)
                    sent = time.monotonic()
                    continue
                data = b""  # only part of a character so far
            else:
                offset += len(data)
                yield data
                sent = time.monotonic()
                continue
        job = store.get_job(job_id)
        if job is None:  # forgotten meanwhile (TRIGGER_KEEP_JOBS): nothing more to send
            return
        if _all_sent(job, offset):
            if sse:
                yield f"event: end\ndata: {json.dumps(job.to_dict())}\n\n".encode()
            return
        if job.state.ended:
            if sse and job.log_size - offset < 4:
                offset = job.log_size  # only part of a character is left at the very end
            from_store = True  # (the database is the whole truth; the tail only a help)
            continue  # the rest was stored between the read and this look: read it
        dispatcher.wait_logged(version, QUIET_CHECK)
        now = time.monotonic()
        if now - sent >= QUIET_CHECK and now >= next_look:
            if gone():
                return
            next_look = now + QUIET_CHECK
        if sse and now - sent >= KEEPALIVE:
            yield b": keepalive\n\n"
            sent = now
    if not sse:  # (an SSE client knows the end by its `end` event, and resumes by itself)
        try:
            job = store.get_job(job_id)
        except StoreError:
            raise StreamCut() from None
        if job is not None and not _all_sent(job, offset):
            raise StreamCut()


def _all_sent(job, offset: int) -> bool:
    """Whether the job has ended and its whole log is sent."""
    return job.state.ended and offset >= job.log_size


def _utf8_prefix(data: bytes) -> tuple[str, int]:
    """Decode the longest prefix of whole UTF-8 characters (bad bytes become U+FFFD)."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            return data[:cut].decode("utf-8"), cut
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":
                return data.decode("utf-8", "replace"), len(data)
    return data.decode("utf-8", "replace"), len(data)


def _sse_event(text: str, offset: int) -> bytes:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (f"id: {offset}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()
