"""gunicorn worker classes with a deadline on the request header block (README "Security").

gunicorn reads a request's header block before the app runs, with no time limit: a client
that sends its headers one byte a second (slowloris) holds a sync worker until the
arbiter kills it after ``timeout``, and a gthread thread for as long as it keeps sending
(there is room for ~800 kB of headers). It needs no bearer token either: tokens are
checked once the headers are in. These subclasses give the header block
TWINFER_HEADER_TIMEOUT seconds from the moment the worker starts reading the connection
(for a kept-alive connection: from when its next request starts to arrive); when it
passes, the watchdog of ``workers.limits`` shuts the socket's read side, gunicorn's parser
sees the end of the stream and the connection is closed. The body then has its own
deadline (TWINFER_BODY_TIMEOUT, ``workers.limits.BodyDeadline``).

They also let the app close a connection after its answer with ``Connection: close``
(``workers.limits.close_connection``), which gunicorn otherwise offers no way to do.

The gthread worker also serves a kept-alive connection's next request in the same thread
when it arrives within TWINFER_KEEPALIVE_LINGER (``ThreadDeadlineWorker``).

The watchdog gets a ``dup()`` of the socket: a TLS connection is wrapped (and the
original socket object detached) after the deadline is armed, and the duplicate keeps
the right connection addressable until the deadline is disarmed.
"""
from __future__ import annotations

import select
import threading
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from workers.limits import WATCHDOG
from workers.settings import env_seconds

HEADER_TIMEOUT = env_seconds("TWINFER_HEADER_TIMEOUT", 10.0)
KEEPALIVE_LINGER = env_seconds("TWINFER_KEEPALIVE_LINGER", 0.005)


def _arm(sock) -> int | None:
    if HEADER_TIMEOUT <= 0:
        return None
    try:
        duplicate = sock.dup()
    except OSError:
        return None
    return WATCHDOG.arm(time.monotonic() + HEADER_TIMEOUT, duplicate, owned=True)


def _disarm(ticket: int | None) -> None:
    if ticket is not None:
        WATCHDOG.disarm(ticket)


def _offer_close(req) -> None:
    """Let the app end the connection after its answer, with ``Connection: close``
    (``workers.limits.close_connection``): gunicorn ignores a Connection header from the
    app, but honours its request's ``must_close`` when it writes the response headers."""
    if req.body is not None:
        req.body.twinfer_close = partial(setattr, req, "must_close", True)


def _readable_within(sock, seconds: float) -> bool:
    """Whether the next request on a kept-alive connection starts within ``seconds``."""
    if getattr(sock, "pending", None) and sock.pending():  # TLS: bytes already decrypted
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


class ThreadDeadlineWorker(ThreadWorker):
    """gthread: each request's header block must arrive within TWINFER_HEADER_TIMEOUT, and a
    kept-alive connection whose next request comes within TWINFER_KEEPALIVE_LINGER is served
    by the same thread.

    Why the linger: gunicorn hands every kept-alive connection back to the worker's main
    thread after each answer, which re-arms it in its poller and passes the next request to
    a pool thread again: ~9 context switches and GIL handovers per request, 1.2-1.5 ms of
    CPU per 640x480 request at one client per worker (``perf stat``: 20.0-21.4 ms against
    18.2-18.8 ms with the linger, the sync worker's 18.6). A thread waits at most the linger
    (5 ms) for a client that sends its requests back to back; a slower client goes back to
    the poller as before, and the header deadline applies to every request either way. It
    stops lingering as soon as another connection is waiting for a thread: more busy clients
    than threads (8 wrk connections on one 6-thread worker) starved two of them for over a
    second otherwise; gunicorn's round trip through the poller is what keeps them fair."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections handed to the pool that no thread has taken up yet
        self._waiting_lock = threading.Lock()

    def enqueue_req(self, conn):
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._waiting_lock:
            self._waiting -= 1
        while True:
            keep_alive = self._handle_one(conn)
            if keep_alive is not True or not self.alive or KEEPALIVE_LINGER <= 0 or self._waiting > 0:
                return keep_alive
            read_ahead = conn.parser.unreader.buf.getvalue()  # a drained body read into the next request
            if not read_ahead and not _readable_within(conn.sock, KEEPALIVE_LINGER):
                return keep_alive

    def _handle_one(self, conn):
        conn.twinfer_header_ticket = _arm(conn.sock)
        try:
            return super().handle(conn)
        finally:
            _disarm(conn.twinfer_header_ticket)
            conn.twinfer_header_ticket = None

    def handle_request(self, req, conn):
        _disarm(conn.twinfer_header_ticket)  # the headers are in
        conn.twinfer_header_ticket = None
        _offer_close(req)
        return super().handle_request(req, conn)


class SyncDeadlineWorker(SyncWorker):
    """sync: the header block must arrive within TWINFER_HEADER_TIMEOUT (instead of holding
    the worker until the arbiter kills it after TWINFER_WORKER_TIMEOUT)."""

    _header_ticket: int | None = None

    def handle(self, listener, client, addr):
        self._header_ticket = _arm(client)
        try:
            super().handle(listener, client, addr)
        finally:
            _disarm(self._header_ticket)
            self._header_ticket = None

    def handle_request(self, listener, req, client, addr):
        _disarm(self._header_ticket)
        self._header_ticket = None
        _offer_close(req)
        return super().handle_request(listener, req, client, addr)
