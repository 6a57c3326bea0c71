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

The watchdog gets a ``dup()`` of the socket: a TLS connection is wrapped (and the
original socket object detached) after the deadline is armed, and the duplicate keeps
the right connection addressable until the deadline is disarmed.
"""
from __future__ import annotations

import os
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from workers.limits import WATCHDOG

HEADER_TIMEOUT = float(os.environ.get("TWINFER_HEADER_TIMEOUT") or 10.0)


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


class ThreadDeadlineWorker(ThreadWorker):
    """gthread: each request's header block must arrive within TWINFER_HEADER_TIMEOUT."""

    def handle(self, conn):
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
