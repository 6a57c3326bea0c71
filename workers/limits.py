"""A deadline for request bodies, so a client that trickles its upload cannot hold a
worker (sync) or a thread (gthread) for longer than TWINFER_BODY_TIMEOUT seconds.

A per-read socket timeout does not bound a slow client: one byte a second satisfies any
per-``recv`` timeout forever. So the deadline is a wall-clock one, counted from the moment
the request's headers were parsed: ``BodyDeadline`` swaps ``req.stream`` for a
``DeadlineStream`` before any resource reads it, and every read registers its socket with
one per-process watchdog thread. If the deadline passes while a read is blocked, the
watchdog shuts the socket's read side down, the blocked ``recv`` returns at once, and the
request ends in a 408 JSON error (``reason: body_timeout``) that says ``Connection: close``.
It works the same in every gunicorn worker class and costs a lock and a heap push per read.
The same watchdog enforces the header deadline of ``workers.gunicorn_workers``.
"""
from __future__ import annotations

import heapq
import itertools
import socket
import ssl
import threading
import time

import falcon

from twinfer.errors import RequestError

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTimeout(RequestError):
    status = 408
    reason = "body_timeout"


def _shut_read_side(sock) -> None:
    """Wake any ``recv`` blocked on ``sock`` (it returns EOF) and keep the write side for
    the 408. ``socket.socket.shutdown`` is called directly so that a TLS socket is not
    unwrapped (``SSLSocket.shutdown`` would drop the TLS layer before the answer)."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            socket.socket.shutdown(sock, socket.SHUT_RD)
        else:
            sock.shutdown(socket.SHUT_RD)
    except (OSError, AttributeError):
        pass


def close_connection(body) -> None:
    """Have the server close this request's connection after the answer, saying so with
    ``Connection: close`` (``body``: gunicorn's ``wsgi.input``). Our worker classes
    (``workers.gunicorn_workers``) attach ``twinfer_close`` to it; with gunicorn's stock
    workers the ``failed`` flag still closes the connection, but without the header, so a
    client may have sent its next request on it already."""
    body = getattr(body, "_stream", body)  # under a DeadlineStream
    close = getattr(body, "twinfer_close", None)
    if close is not None:
        close()
    elif hasattr(body, "failed"):
        body.failed = True


class Watchdog:
    """One thread per worker process that shuts sockets whose read deadline passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[object, bool]] = {}
        self._fired: set[int] = set()
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, sock, owned: bool = False) -> int:
        """Shut ``sock``'s read side at ``deadline`` unless disarmed first. ``owned``: the
        watchdog closes ``sock`` (a ``dup()`` taken for it) when it fires or is disarmed."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                # Started lazily in the process that serves (never in gunicorn's arbiter);
                # a forked child gets its own.
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
            ticket = next(self._tickets)
            self._armed[ticket] = (sock, owned)
            heapq.heappush(self._heap, (deadline, ticket))
            if self._heap[0][1] == ticket:
                self._cond.notify()
            return ticket

    def disarm(self, ticket: int) -> bool:
        """Forget ``ticket``; True if its deadline had already fired."""
        with self._cond:
            armed = self._armed.pop(ticket, None)
            if armed is not None:
                sock, owned = armed
                if owned:
                    sock.close()
                return False
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed in time
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, ticket = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                sock, owned = self._armed.pop(ticket)
                self._fired.add(ticket)
                _shut_read_side(sock)
                if owned:
                    sock.close()


WATCHDOG = Watchdog()


class DeadlineStream:
    """``wsgi.input`` with a wall-clock deadline over all its reads."""

    def __init__(self, stream, deadline: float, seconds: float, sock) -> None:
        self._stream = stream
        self._deadline = deadline
        self._seconds = seconds
        self._sock = sock

    def _expire(self) -> None:
        if self._sock is not None:
            _shut_read_side(self._sock)
        close_connection(self._stream)  # the rest of this body will not be read
        raise BodyTimeout(f"the request body did not arrive within {self._seconds:g} s")

    def _guarded(self, method, *args):
        if time.monotonic() >= self._deadline:
            self._expire()
        if self._sock is None:
            return method(*args)
        ticket = WATCHDOG.arm(self._deadline, self._sock)
        try:
            result = method(*args)
        except Exception:
            if WATCHDOG.disarm(ticket):
                self._expire()
            raise
        if WATCHDOG.disarm(ticket):
            self._expire()
        return result

    def read(self, size: int | None = -1) -> bytes:
        return self._guarded(self._stream.read, -1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._guarded(self._stream.readline, -1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._guarded(self._stream.readlines, -1 if hint is None else hint)

    def __iter__(self):
        while line := self.readline():
            yield line


class BodyDeadline:
    """Falcon middleware: give every request body TWINFER_BODY_TIMEOUT seconds to arrive
    (0: no deadline), and answer ``Connection: close`` after an error to a request with a
    body, which may be unread (a 401, 413 or 415 is decided before the body is read): a
    kept-alive gthread connection would otherwise wait up to 5 s draining the rest, and
    then close without having said so, under a client that may be reusing it already."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.seconds <= 0 or req.method not in BODY_METHODS or req.content_length == 0:
            return
        stream = DeadlineStream(req.stream, time.monotonic() + self.seconds, self.seconds, req.env.get("gunicorn.socket"))
        # Both: Falcon's ``bounded_stream`` (and so ``get_media``) wraps env["wsgi.input"].
        req.stream = req.env["wsgi.input"] = stream

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        if req.method not in BODY_METHODS or req.content_length == 0:
            return
        if resp.status_code >= 400:
            close_connection(req.env.get("wsgi.input"))


def create_body_deadline(seconds: float) -> BodyDeadline:
    return BodyDeadline(seconds)
