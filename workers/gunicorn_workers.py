"""gunicorn's gthread worker with a deadline on the request header block (README "Security").

gunicorn reads a request's header block before the app runs, with no time limit: a client
that sends its headers one byte a second (slowloris) holds a sync worker until the
arbiter kills it after ``timeout``, and a gthread thread for as long as it keeps sending
(there is room for ~800 kB of headers). It needs no bearer token either: tokens are
checked once the headers are in. This subclass gives the header block
TWINFER_HEADER_TIMEOUT seconds from the moment the worker starts reading the connection
(for a kept-alive connection: from when its next request starts to arrive); when it
passes, the watchdog of ``workers.limits`` shuts the socket's read side, gunicorn's parser
sees the end of the stream and the connection is closed. The body then has its own
deadline (TWINFER_BODY_TIMEOUT, ``workers.limits.BodyDeadline``).

It also lets the app close a connection after its answer with ``Connection: close``
(``workers.limits.close_connection``), which gunicorn otherwise offers no way to do.

It serves a kept-alive connection's next request in the same thread
when it arrives within TWINFER_KEEPALIVE_LINGER (``ThreadDeadlineWorker``). With several
workers it shares busy clients with the others the way sync workers do: it accepts a
client only when it would start that client's request at once, and while clients wait
(for its inference slot, ``workers.inference_slots``, or in the kernel's accept queue)
it ends connections after their answer, so they queue where every worker takes from.

When told to stop, it closes its listeners at the start of the drain, after taking the
connections the kernel had already queued on them (closing a listener resets those): a
client that reconnects after its ``Connection: close`` is refused instead of being queued
on a listener nobody accepts from any more and reset when the worker exits (``hey -c 2``
saw one reset per connection at every stop, with either worker class).

It gathers each request's TLS handshake and header block in its main
thread and gives a pool thread only complete header blocks (``workers.header_gate``): a
client trickling its headers or its ClientHello costs a file descriptor, not a thread, and
one client address may have at most TWINFER_CLIENT_PENDING_LIMIT connections gathering
per worker.

The sync worker class, with the same header deadline, is ``workers.sync_worker``; the
socket-level steps both share are ``workers.connection_sockets``.
"""
from __future__ import annotations

import selectors
import threading
import time
from functools import partial

from gunicorn import http
from gunicorn.sock import ssl_context
from gunicorn.workers.gthread import TConn, ThreadWorker

from twinfer.settings_table import read
from workers import inference_slots, metrics
from workers.connection_sockets import (
    HEADER_TIMEOUT,
    arm_header_deadline,
    connection_queued,
    disarm_header_deadline,
    offer_close,
    readable_within,
    take_queued,
)
from workers.header_gate import Gathering, HeaderGate, handshake_step, header_block_complete, read_available
from workers.inference_slots import InferenceSlots
from workers.limits import close_connection
from workers.protocol_errors import JsonProtocolErrors

KEEPALIVE_LINGER = read("TWINFER_KEEPALIVE_LINGER")
CLIENT_PENDING_LIMIT = read("TWINFER_CLIENT_PENDING_LIMIT")
# handle()'s answer for a kept-alive connection whose next header block is not all in:
# the main thread gathers the rest (ThreadDeadlineWorker.finish_request).
_GATHER = object()
# Sharing clients between several gthread workers (ThreadDeadlineWorker.accept): how long
# a worker holds back from the next client while the last one's request has not asked
# for an inference slot (a client that sends nothing, or trickles its upload, cannot keep
# it from accepting for longer), and for how long after it last saw clients wait it keeps
# ending connections after each answer.
ACCEPT_PROMISE = 0.02
CONTENTION_MEMORY = 1.0


class ThreadDeadlineWorker(JsonProtocolErrors, ThreadWorker):
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
        self._refusing = False  # the listeners are closed: the worker is stopping
        self._slots: InferenceSlots | None = None  # set when several workers share clients
        self._promised: TConn | None = None  # the last accepted connection, until its request is in line
        self._promise_ends = 0.0
        self._serving = threading.local()  # .conn: the connection this pool thread serves
        self._contended_at = -CONTENTION_MEMORY
        self._gate: HeaderGate | None = None  # set in init_process, for HTTP/1 only

    def init_process(self):
        # gunicorn's HTTP/2 set-up (ALPN, prior knowledge) stays its own, in the thread.
        if "h2" not in self.cfg.http_protocols:
            self._gate = HeaderGate(CLIENT_PENDING_LIMIT, HEADER_TIMEOUT)
        super().init_process()  # runs the worker

    # -- sharing clients with the other workers (workers.inference_slots) -------------
    # Main thread only, like the poller: pool threads ask for it through method_queue.

    def accept(self, listener):
        """Take a client only when this worker would start its request at once: no slot
        taken, and the previous new client's request in line for one (or ACCEPT_PROMISE
        passed). Otherwise the client stays in the kernel's queue, which every worker
        accepts from, for the first one that is free: the way sync workers share clients."""
        if self._slots is not None and not self._free_to_accept():
            if self._slots.full:  # a client came while this worker had no slot for it
                self._contended_at = time.monotonic()
            super().set_accept_enabled(False)
            return
        try:
            client, address = listener.accept()
        except (BlockingIOError, ConnectionAbortedError, InterruptedError):
            return
        if self._gate is not None and not self._gate.admits(address):
            client.close()
            metrics.CONNECTIONS_DROPPED.labels("client_limit").inc()
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())
        if self._slots is not None:
            self._promised, self._promise_ends = conn, time.monotonic() + ACCEPT_PROMISE
            super().set_accept_enabled(False)
        self._take(conn)

    # -- header blocks gathered in the main thread (workers.header_gate) --------------

    def _take(self, conn, buffered: bytes = b"") -> None:
        """Serve ``conn``: in a pool thread once its header block is in."""
        if self._gate is None:
            conn.sock.setblocking(True)
            self.enqueue_req(conn)
            return
        handshaking = False
        if conn.parser is None and self.cfg.is_ssl:
            try:
                conn.sock = ssl_context(self.cfg).wrap_socket(
                    conn.sock, server_side=True, suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=False,
                )
            except OSError:  # the client is gone already
                self.nr_conns -= 1
                conn.close()
                return
            handshaking = True
        conn.sock.setblocking(False)
        gathering = self._gate.start(conn, conn.client, buffered, handshaking)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._gather, gathering))
        self._gather(gathering)  # what has arrived already

    def _gather(self, gathering: Gathering, _fileobj=None) -> None:
        conn = gathering.conn
        try:
            if gathering.handshaking:
                if not handshake_step(conn.sock):
                    return
                gathering.handshaking = False
            data, closed = read_available(conn.sock)
        except OSError:  # ssl.SSLError too: a failed handshake, a reset
            self._drop(gathering, "tls_handshake" if gathering.handshaking else None)
            return
        if gathering.feed(data):
            self._hand_over(gathering)
        elif closed:
            self._drop(gathering, None)

    def _hand_over(self, gathering: Gathering) -> None:
        """The header block is in: a pool thread parses it (the bytes given back to
        gunicorn's parser) and serves the request."""
        conn = gathering.conn
        self.poller.unregister(conn.sock)
        self._gate.finish(gathering)
        conn.sock.setblocking(True)
        if conn.parser is None:
            conn.initialized = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(gathering.buffer))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, gathering: Gathering, reason: str | None) -> None:
        """Close a connection that never completed its header block; ``reason`` (a closed
        set: header_timeout, tls_handshake) is counted, a client that left is not."""
        conn = gathering.conn
        self.poller.unregister(conn.sock)
        self._gate.finish(gathering)
        self.nr_conns -= 1
        conn.close()
        if reason is not None:
            metrics.CONNECTIONS_DROPPED.labels(reason).inc()

    def _drop_expired(self) -> None:
        for gathering in self._gate.expired():
            self._drop(gathering, "header_timeout")

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request starts: gathered like a new one."""
        if self._gate is None:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._regather(conn, b"")

    def _regather(self, conn, buffered: bytes) -> None:
        if not self._gate.admits(conn.client):
            self.nr_conns -= 1
            conn.close()
            metrics.CONNECTIONS_DROPPED.labels("client_limit").inc()
            return
        self._take(conn, buffered)

    def finish_request(self, conn, fs):
        if not fs.cancelled() and fs.exception() is None and fs.result() is _GATHER:
            self._regather(conn, conn.twinfer_gathered)
            conn.twinfer_gathered = None
            return
        super().finish_request(conn, fs)

    def _free_to_accept(self) -> bool:
        if self._promised is not None and time.monotonic() >= self._promise_ends:
            self._promised = None
        return self._promised is None and not self._slots.full

    def _resume_accepting(self) -> None:
        if self.alive and not self._refusing and self._free_to_accept():
            super().set_accept_enabled(True)

    def _promise_kept(self, conn) -> None:
        if self._promised is conn:
            self._promised = None
            self._resume_accepting()

    def wait_for_and_dispatch_events(self, timeout):
        if self._promised is not None:  # wake up when the promise runs out
            timeout = max(0.0, min(timeout, self._promise_ends - time.monotonic()))
        if self._gate is not None:  # and when a header deadline passes
            next_deadline = self._gate.seconds_to_next_deadline()
            if next_deadline is not None:
                timeout = min(timeout, next_deadline)
        super().wait_for_and_dispatch_events(timeout)
        if self._gate is not None:
            self._drop_expired()
        if self._slots is not None and not self._accepting:
            self._resume_accepting()

    def _slot_freed(self) -> None:
        """Called by the thread that freed the worker's last taken slot."""
        if not self._accepting:
            self.method_queue.defer(self._resume_accepting)

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
            if not read_ahead and not readable_within(conn.sock, KEEPALIVE_LINGER):
                return keep_alive
            if self._gate is not None and not self._next_header_block_in(conn):
                return _GATHER

    @staticmethod
    def _next_header_block_in(conn) -> bool:
        """Whether the next request's header block is all in (or the client closed): then
        this thread serves it. Otherwise what has come is kept for the main thread, which
        gathers the rest: a client cannot hold the thread by trickling that request."""
        buffered = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        try:
            data, closed = read_available(conn.sock)
        except OSError:
            data, closed = b"", True
        finally:
            conn.sock.setblocking(True)
        received = buffered + data
        if closed or header_block_complete(received):
            conn.parser.unreader.unread(received)
            return True
        conn.twinfer_gathered = received
        return False

    def _handle_one(self, conn):
        conn.twinfer_header_ticket = arm_header_deadline(conn.sock)
        try:
            return super().handle(conn)
        finally:
            disarm_header_deadline(conn.twinfer_header_ticket)
            conn.twinfer_header_ticket = None

    def handle_request(self, req, conn):
        disarm_header_deadline(conn.twinfer_header_ticket)  # the headers are in
        conn.twinfer_header_ticket = None
        offer_close(req)
        self._serving.conn = conn
        try:
            return super().handle_request(req, conn)
        finally:
            self._serving.conn = None
            self._in_line(conn)  # a request that took no slot (/healthz, a refused upload)

    def _slot_asked(self) -> None:
        """``on_ask`` of the inference slots, in the request's thread."""
        conn = getattr(self._serving, "conn", None)
        if conn is not None:
            self._in_line(conn)

    def _in_line(self, conn) -> None:
        """The new client's request holds a slot or waits in line for one: the worker may
        take its next client. (Resolved any earlier, at its headers, the worker took one
        more client in the moment before the request took the slot, and that one waited a
        whole inference: 2-6 % of requests at 4 clients, the p99.)"""
        if self._promised is conn:
            self.method_queue.defer(self._promise_kept, conn)

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi
        slots = inference_slots.installed()
        if slots is not None and self.cfg.workers > 1:
            self._slots = slots
            slots.on_free = self._slot_freed
            slots.on_ask = self._slot_asked

        def close_when_refusing_or_others_wait(environ, start_response):
            answer = app(environ, start_response)
            # gunicorn writes the headers after this, in this thread
            if self._refusing or (self._slots is not None and self._others_wait()):
                close_connection(environ["wsgi.input"])
            return answer

        self.wsgi = close_when_refusing_or_others_wait

    def _others_wait(self) -> bool:
        """Requests of this worker wait for a slot, or clients for a worker (now or less
        than CONTENTION_MEMORY ago): a kept-alive client would go before them, so its
        connection ends and it queues as they do. A lone client keeps its connection."""
        now = time.monotonic()
        if self._slots.waiting or connection_queued(self.sockets):
            self._contended_at = now
        # A request that queued for a slot counts too: with two clients on one slot, the
        # one waiting has its slot by the time the other's answer is checked here.
        last = max(self._contended_at, self._slots.last_queued)
        return now - last < CONTENTION_MEMORY

    def set_accept_enabled(self, enabled):
        """gunicorn calls this with False as its main loop ends, which is where the drain
        starts once the worker is told to stop; with True on every turn of its loop while
        it has room for connections, which waits here until this worker is free to accept."""
        if not self.alive and not self._refusing:
            self._stop_listening()
        if enabled and self._slots is not None and not self._free_to_accept():
            return
        if not self._refusing:
            super().set_accept_enabled(enabled)

    def _stop_listening(self) -> None:
        """Serve what is queued on the listeners and close them; from then on every answer
        whose headers are still to be written says ``Connection: close``. In this order, no
        client is told to reconnect while a listener still takes connections that nobody
        will accept. (An answer whose headers went out before says keep-alive, and its
        connection's next request is answered with ``Connection: close``, by gunicorn.)"""
        super().set_accept_enabled(False)
        for listener in self.sockets:
            address = listener.getsockname()
            for client, peer in take_queued(listener, self.cfg.backlog):
                self.nr_conns += 1
                self._take(TConn(self.cfg, client, peer, address))
            listener.close()
        self._refusing = True
