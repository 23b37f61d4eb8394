"""What both servers share: how a serving process logs (worker/deferred_log.py), how soon a
thread woken by another gets the interpreter, what the garbage collector scans, and telling a
client that has hung up."""

from __future__ import annotations

import gc
import logging
import select
import socket
import sys

from .deferred_log import DeferredHandler

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
# A thread woken by another (a finished build, a waiting request) gets the interpreter within
# 0.5 ms instead of Python's default 5 ms. Measured 3 ms less per round trip on 2026-11-27; once
# fewer threads took part in a job, 5 ms did as well within the noise (2026-11-28).
SWITCH_INTERVAL = 0.0005
# gunicorn's settings forwarded_allow_ips, forwarder_headers, secure_scheme_headers and
# http_protocols, for both servers: no peer may set the WSGI path or scheme with headers.
# gunicorn takes SCRIPT_NAME and the scheme (X-Forwarded-Proto, ...) from the peers in
# forwarded_allow_ips (127.0.0.1 by default), where a SCRIPT_NAME the path does not start with
# was a 500, one it does routed the request by the rest, and contradictory scheme headers were a
# 400. Neither app builds an absolute URL or reads the scheme, so none is taken from anyone; and
# with nothing to grant, the check of each request's peer against the list (an IP address
# parse: 4.5% of the controller's interpreter time in a burst of identical triggers) is skipped
# by trusting "*". That list also lets peers speak cleartext HTTP/2 and set its scheme: HTTP/1.1
# only, so "*" grants nothing.
NO_FORWARDING: tuple[str, str, dict, str] = ("*", "", {}, "h1")
# Linux tells a peer's close apart from data to read; elsewhere only a full hang-up is seen.
POLLRDHUP = getattr(select, "POLLRDHUP", 0)


def setup_logging(level: str) -> None:
    """Log records as LOG_FORMAT at `level` to stderr, lines below WARNING a moment later and
    together (DeferredHandler), without what the format does not show (the logging HOWTO's
    "Optimization"): about a third of the cost of each line, and every job writes one."""
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[DeferredHandler(stderr)])
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def tune_interpreter() -> None:
    """In the serving process (after gunicorn's fork)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    # What exists once the app is loaded lives as long as the process: moved out of the
    # collector's sight, a full collection scans only what came later. Measured 2026-11-28 in
    # 1,000 round trips: the controller's two full collections took 65-68 ms each (a request
    # waited that long), and 0.4-1.3 ms after the freeze.
    gc.freeze()


def hung_up(sock: socket.socket | None) -> bool:
    """Whether the client closed the connection (or its sending half): a controller request
    waiting for a job, or a quiet log follow, writes nothing until the job ends or logs, so a
    client that gave up would otherwise hold its slot (and a thread) until then; a start whose
    controller gave up must not start. Data waiting to be read (a pipelined request) is not a
    hang-up. poll, not select: any descriptor number, and TLS sockets too."""
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), POLLRDHUP)
        events = poller.poll(0)
    except (OSError, ValueError):  # closed already
        return True
    return any(mask & (POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL)
               for _, mask in events)
