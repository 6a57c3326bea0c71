"""gunicorn's sync worker with a deadline on the request header block (README "Security").

A sync worker reads a request's header block with no time limit: a client trickling its
headers holds the worker until the arbiter kills it after TWINFER_WORKER_TIMEOUT. This one
gives the header block TWINFER_HEADER_TIMEOUT seconds (``workers.connection_sockets``), lets
the app close a connection after its answer, answers requests gunicorn cannot parse with
the JSON error document, and closes its listeners at the start of a stop after taking the
connections the kernel had already queued on them (closing a listener resets those).
The gthread worker is ``workers.gunicorn_workers``.
"""
from __future__ import annotations

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from workers.connection_sockets import (
    arm_header_deadline,
    disarm_header_deadline,
    offer_close,
    take_queued,
)
from workers.protocol_errors import JsonProtocolErrors


class ClosedListener:
    """A listener closed at the stop, for the connections taken from its queue: gunicorn's
    sync worker only asks it for its address."""

    def __init__(self, address) -> None:
        self._address = address

    def getsockname(self):
        return self._address


class SyncDeadlineWorker(JsonProtocolErrors, SyncWorker):
    """sync: the header block must arrive within TWINFER_HEADER_TIMEOUT (instead of holding
    the worker until the arbiter kills it after TWINFER_WORKER_TIMEOUT).

    Every sync answer says ``Connection: close``, so its client reconnects at once: a stop
    that arrives during a request closes the listeners when the app has answered, before
    gunicorn writes that answer, and the connections queued meanwhile are served after it."""

    _header_ticket: int | None = None
    _queued: list | None = None  # (listener address, socket, peer) taken at the stop

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi

        def stop_listening_before_the_answer(environ, start_response):
            answer = app(environ, start_response)
            if not self.alive:
                self._stop_listening()
            return answer

        self.wsgi = stop_listening_before_the_answer

    def run(self):
        super().run()
        self._stop_listening()
        for address, client, peer in self._queued:
            self.handle(ClosedListener(address), client, peer)

    def _stop_listening(self) -> None:
        if self._queued is not None:
            return
        self._queued = []
        for listener in self.sockets:
            address = listener.getsockname()
            for client, peer in take_queued(listener, self.cfg.backlog):
                client.setblocking(True)
                util.close_on_exec(client)
                self._queued.append((address, client, peer))
            listener.close()

    def handle(self, listener, client, addr):
        self._header_ticket = arm_header_deadline(client)
        try:
            super().handle(listener, client, addr)
        finally:
            disarm_header_deadline(self._header_ticket)
            self._header_ticket = None

    def handle_request(self, listener, req, client, addr):
        disarm_header_deadline(self._header_ticket)
        self._header_ticket = None
        offer_close(req)
        return super().handle_request(listener, req, client, addr)
