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

TAIL_BYTES = 4 * 1024 * 1024  # kept per followed log (the newest piece is kept whatever its size)


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
                if last_offset + len(last) != offset:  # not where the kept pieces end
                    tail.pieces.clear()
                    tail.size = 0
            tail.pieces.append((offset, data))
            tail.size += len(data)
            while tail.size - len(tail.pieces[0][1]) >= self.keep:
                tail.size -= len(tail.pieces.popleft()[1])

    def read(self, job_id: int, offset: int) -> bytes | None:
        """The kept bytes from `offset` to the end of the newest kept piece (that piece itself,
        not a copy, when `offset` is its start); b"" if `offset` is where it ends (nothing newer
        was stored); None if not known here (older than what is kept, past the end, or nobody
        follows this log)."""
        with self._lock:
            tail = self._tails.get(job_id)
            if tail is None or not tail.pieces:
                return None
            newest_start, newest = tail.pieces[-1]
            if offset == newest_start + len(newest):
                return b""
            if offset == newest_start:
                return newest
            kept = []
            for start, data in tail.pieces:
                if kept:
                    kept.append(data)
                elif start <= offset < start + len(data):
                    kept.append(data[offset - start:])
            return b"".join(kept) if kept else None
