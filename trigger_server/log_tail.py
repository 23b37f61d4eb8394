"""The newest stored pieces of the logs someone follows live, kept in memory.

A reader following a growing log (`GET /jobs/<id>/log?follow=1`) wants each piece right after
it was stored. Reading it back from SQLite made the reader contend with the writer for the
database; a 200 MB log then went at the speed of the two together. The store tells the LogTail
each piece once committed; only the logs with a live reader keep theirs, at most TAIL_BYTES each,
and a reader that fell further behind reads from the database as before.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

TAIL_BYTES = 4 * 1024 * 1024  # kept per followed log, and one piece more (about 1 MiB)


@dataclass
class _Tail:
    readers: int = 0
    pieces: deque = field(default_factory=deque)  # (offset, data), contiguous, oldest first
    size: int = 0  # bytes in `pieces`


class LogTail:
    def __init__(self, keep: int = TAIL_BYTES):
        self.keep = keep
        self._lock = threading.Lock()
        self._tails: dict[int, _Tail] = {}

    def follow(self, job_id: int) -> None:
        """A live reader of this job's log starts (call unfollow when it stops)."""
        with self._lock:
            self._tails.setdefault(job_id, _Tail()).readers += 1

    def unfollow(self, job_id: int) -> None:
        with self._lock:
            tail = self._tails.get(job_id)
            if tail is not None:
                tail.readers -= 1
                if tail.readers <= 0:
                    del self._tails[job_id]

    def stored(self, job_id: int, offset: int, data: bytes) -> None:
        """`data` was committed at `offset` of the job's log."""
        with self._lock:
            tail = self._tails.get(job_id)
            if tail is None or not data:
                return
            if tail.pieces:
                last_offset, last = tail.pieces[-1]
                end = last_offset + len(last)
                if offset + len(data) <= end:
                    return  # older than what is kept (told late): nothing new
                if offset != end:  # not where the kept pieces end
                    tail.pieces.clear()
                    tail.size = 0
            tail.pieces.append((offset, data))
            tail.size += len(data)
            while tail.size - len(tail.pieces[0][1]) >= self.keep:
                tail.size -= len(tail.pieces.popleft()[1])

    def read(self, job_id: int, offset: int, limit: int) -> bytes | None:
        """At most `limit` kept bytes from `offset` on (a kept piece itself, not a copy, when
        it is all of the answer); b"" if `offset` is where the newest kept piece ends (nothing
        newer was stored); None if not known here (older than what is kept, past the end, or
        nobody follows this log)."""
        with self._lock:
            tail = self._tails.get(job_id)
            if tail is None or not tail.pieces:
                return None
            newest_start, newest = tail.pieces[-1]
            if offset == newest_start + len(newest):
                return b""
            parts: list[bytes] = []
            got = 0
            for start, data in tail.pieces:
                if got >= limit:
                    break
                skip = offset - start if not parts else 0
                if not parts and not 0 <= skip < len(data):
                    continue
                if skip or len(data) - skip > limit - got:
                    data = data[skip:skip + limit - got]
                parts.append(data)
                got += len(data)
            if not parts:
                return None
            return parts[0] if len(parts) == 1 else b"".join(parts)
