"""Header blocks gathered by a gthread worker's main thread before a pool thread is used.

gunicorn hands a new connection to a pool thread at once, and the thread reads its TLS
handshake and header block blocking: 20 clients trickling a header byte every 2 s (or 16
sending one byte of a ClientHello) held every thread of the pool for the whole header
deadline and left normal clients timeouts (issue 19). Here the worker's poller, which
costs nothing per idle connection, does the non-blocking handshake and reads whatever
each connection has sent until its header block is complete; only then does a thread
take it, with those bytes given back to gunicorn's parser. A slow client costs a file
descriptor and at most ``GATHER_LIMIT`` bytes, not a thread.

Two bounds keep that cheap: the header deadline (TWINFER_HEADER_TIMEOUT) from the moment
a connection is accepted (or, kept alive, starts its next request), after which the
connection is closed; and TWINFER_CLIENT_PENDING_LIMIT connections per client address
and worker that may be gathering at once, so one address cannot fill the worker's
connection table (gunicorn's ``worker_connections``); beyond it a new connection is closed
at once. ``HeaderGate`` keeps that bookkeeping (no sockets); ``read_available`` and
``handshake_step`` are the two non-blocking socket steps.
"""
from __future__ import annotations

import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

# A header block larger than this goes to a thread as it is: gunicorn's parser applies its
# own limits (request line, field count and size) and the header deadline still holds.
# Real header blocks are well under 2 KiB; the bound is what a trickling client may make
# the worker hold per connection.
GATHER_LIMIT = 16 * 1024
READ_PIECE = 16 * 1024
# The end of a header block: CRLF CRLF, or a bare LF LF, which gunicorn's parser then
# refuses with a 400 (rather than the gate waiting for a CRLF that never comes).
_ENDINGS = (b"\r\n\r\n", b"\n\n")


@dataclass(eq=False)
class Gathering:
    """One connection whose header block is not complete yet."""

    conn: Any  # gunicorn's TConn
    address: str  # the client's address, the key of the per-address limit
    deadline: float | None
    buffer: bytearray = field(default_factory=bytearray)
    handshaking: bool = False  # TLS: the handshake is not done yet

    def feed(self, data: bytes) -> bool:
        """Add ``data``; whether the header block is now complete (or too large to hold)."""
        start = max(0, len(self.buffer) - 3)  # an ending split across two reads
        self.buffer += data
        return header_block_complete(self.buffer, start)


def header_block_complete(buffer: bytes | bytearray, start: int = 0) -> bool:
    """Whether ``buffer`` holds a whole header block (an ending at or after ``start``), or
    as much as the gate holds for one connection."""
    return len(buffer) >= GATHER_LIMIT or any(buffer.find(ending, start) >= 0 for ending in _ENDINGS)


def client_key(address: Any) -> str:
    """The per-address limit's key: the IP of a TCP peer (its port left out), the peer
    name of anything else (a UNIX socket has none: all its clients share one key)."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


class HeaderGate:
    """The connections of one worker that are gathering their header block, by client
    address and by deadline. Main thread only (the worker's poller thread), so no lock."""

    def __init__(self, per_address: int, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_address = per_address  # 0 = no limit
        self._timeout = timeout  # 0 = no deadline
        self._clock = clock
        self._by_address: dict[str, int] = {}
        self._by_deadline: deque[Gathering] = deque()  # one timeout for all: arrival order is deadline order

    def admits(self, address: Any) -> bool:
        """Whether a connection from ``address`` may start gathering now."""
        return not self._per_address or self._by_address.get(client_key(address), 0) < self._per_address

    def start(self, conn: Any, address: Any, buffered: bytes = b"", handshaking: bool = False) -> Gathering:
        deadline = self._clock() + self._timeout if self._timeout > 0 else None
        gathering = Gathering(conn, client_key(address), deadline, bytearray(buffered), handshaking)
        self._by_address[gathering.address] = self._by_address.get(gathering.address, 0) + 1
        if deadline is not None:
            self._by_deadline.append(gathering)
        return gathering

    def finish(self, gathering: Gathering) -> None:
        """``gathering`` is handed to a thread or closed."""
        left = self._by_address.pop(gathering.address) - 1
        if left:
            self._by_address[gathering.address] = left
        if gathering.deadline is not None:
            self._by_deadline.remove(gathering)

    def expired(self) -> list[Gathering]:
        """The connections past their deadline (still counted: ``finish`` each)."""
        now = self._clock()
        return [g for g in self._by_deadline if g.deadline <= now]

    def seconds_to_next_deadline(self) -> float | None:
        if not self._by_deadline:
            return None
        return max(0.0, self._by_deadline[0].deadline - self._clock())


def read_available(sock: Any, limit: int = GATHER_LIMIT) -> tuple[bytes, bool]:
    """What a non-blocking socket (plain or TLS) holds now, up to ``limit`` bytes, and
    whether the peer has closed its side."""
    pieces: list[bytes] = []
    size = 0
    while size < limit:
        try:
            piece = sock.recv(min(READ_PIECE, limit - size))
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        except InterruptedError:
            continue
        if not piece:
            return b"".join(pieces), True
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces), False


def handshake_step(sock: ssl.SSLSocket) -> bool:
    """Advance a non-blocking TLS handshake: whether it is done. A failed handshake raises
    ``ssl.SSLError`` or ``OSError``."""
    try:
        sock.do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    return True
