"""A TCP proxy on 127.0.0.1 that counts the bytes it relays each way.

Put in front of a server (Azurite, a file server), it measures what that server sent at the
wire: headers, bodies, retries and resumed ranges included, whatever the server is. A
benchmark reads ``counts()`` before and after a step and subtracts::

    with ByteCountingProxy(azurite.port) as proxy:
        url = azurite.sas_url("models", "a.zip").replace(f":{azurite.port}/", f":{proxy.port}/")
        before = proxy.counts()
        ...                                   # clients download through the proxy
        served = proxy.counts() - before      # .down: bytes the server sent, .up: bytes it received

One thread per direction per connection: meant for tens of connections, not thousands.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from types import TracebackType

_PIECE = 256 * 1024


@dataclass(frozen=True)
class ByteCounts:
    up: int = 0  # client -> server
    down: int = 0  # server -> client
    connections: int = 0  # accepted so far

    def __sub__(self, other: "ByteCounts") -> "ByteCounts":
        return ByteCounts(self.up - other.up, self.down - other.down, self.connections - other.connections)


class _Connection:
    """A client socket and the server socket it is relayed to; closed when both directions end."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self._open_directions = 2
        self._lock = threading.Lock()

    def direction_done(self) -> None:
        with self._lock:
            self._open_directions -= 1
            last = self._open_directions == 0
        if last:
            self.client.close()
            self.server.close()

    def cut(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ByteCountingProxy:
    """Relays ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; use as a context manager."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._counts = ByteCounts()
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="byte-proxy-accept", daemon=True)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def counts(self) -> ByteCounts:
        with self._lock:
            return self._counts

    def __enter__(self) -> "ByteCountingProxy":
        self._acceptor.start()
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop accepting, cut the open connections, join every relay thread."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(5)
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for connection in connections:
            connection.cut()
        for thread in threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            connection = _Connection(client, server)
            relays = [
                threading.Thread(target=self._relay, args=(connection, True), daemon=True),
                threading.Thread(target=self._relay, args=(connection, False), daemon=True),
            ]
            with self._lock:
                self._counts = ByteCounts(self._counts.up, self._counts.down, self._counts.connections + 1)
                self._connections = [c for c in self._connections if c.client.fileno() != -1] + [connection]
                self._threads = [t for t in self._threads if t.is_alive()] + relays
            for relay in relays:
                relay.start()

    def _relay(self, connection: _Connection, upstream: bool) -> None:
        """Copy one direction until EOF, then pass the EOF on; an error cuts both directions."""
        source, sink = (connection.client, connection.server) if upstream else (connection.server, connection.client)
        buffer = bytearray(_PIECE)
        view = memoryview(buffer)
        try:
            while (n := source.recv_into(buffer)) > 0:
                self._count(n, upstream)  # before forwarding: whoever sees the bytes sees them counted
                sink.sendall(view[:n])
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # a reset on either side
            connection.cut()
        finally:
            connection.direction_done()

    def _count(self, n: int, upstream: bool) -> None:
        with self._lock:
            c = self._counts
            up, down = (c.up + n, c.down) if upstream else (c.up, c.down + n)
            self._counts = ByteCounts(up, down, c.connections)
