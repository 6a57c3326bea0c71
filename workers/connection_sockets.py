"""Socket-level steps of the gunicorn worker classes (``workers.gunicorn_workers``,
``workers.sync_worker``): the header deadline on a connection, letting the app close a
connection after its answer, and taking a listener's queued connections before it closes.

The watchdog gets a duplicate of the socket's descriptor, which keeps the right
connection addressable until the deadline is disarmed whatever happens to the socket
object (a TLS one may be closed and its descriptor number reused meanwhile).
"""
from __future__ import annotations

import select
import socket
import time
from functools import partial
from typing import Any

from twinfer.settings_table import read
from workers.limits import WATCHDOG

HEADER_TIMEOUT = read("TWINFER_HEADER_TIMEOUT")


def arm_header_deadline(sock) -> int | None:
    """A TWINFER_HEADER_TIMEOUT deadline on the header block arriving on ``sock``."""
    if HEADER_TIMEOUT <= 0:
        return None
    try:  # a duplicate of the descriptor: an SSLSocket refuses dup() itself
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
    except OSError:
        return None
    return WATCHDOG.arm(time.monotonic() + HEADER_TIMEOUT, duplicate, owned=True)


def disarm_header_deadline(ticket: int | None) -> None:
    if ticket is not None:
        WATCHDOG.disarm(ticket)


def offer_close(req) -> None:
    """Let the app end the connection after its answer, with ``Connection: close``
    (``workers.limits.close_connection``): gunicorn ignores a Connection header from the
    app, but honours its request's ``must_close`` when it writes the response headers."""
    if req.body is not None:
        req.body.twinfer_close = partial(setattr, req, "must_close", True)


def readable_within(sock, seconds: float) -> bool:
    """Whether the next request on a kept-alive connection starts within ``seconds``."""
    if getattr(sock, "pending", None) and sock.pending():  # TLS: bytes already decrypted
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def connection_queued(listeners) -> bool:
    """Whether a client waits in the kernel's accept queue of one of ``listeners``."""
    poller = select.poll()
    for listener in listeners:
        poller.register(listener, select.POLLIN)
    return bool(poller.poll(0))


def take_queued(listener, limit: int) -> list[tuple[socket.socket, Any]]:
    """The connections the kernel already completed on ``listener`` (at most ``limit``, a
    full backlog): taken before it is closed, which would reset them."""
    listener.setblocking(False)
    taken = []
    while len(taken) < limit:
        try:
            taken.append(listener.accept())
        except ConnectionAbortedError:
            continue
        except BlockingIOError:
            break
    return taken
