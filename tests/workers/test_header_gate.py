"""The header gate's bookkeeping and its two socket steps (workers/header_gate.py), on
socket pairs and a real TLS handshake; the worker that uses them is tested against real
gunicorn in test_slow_headers.py."""
from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest

from tests.support.tls import issue_server_cert
from workers.header_gate import (
    GATHER_LIMIT,
    Gathering,
    HeaderGate,
    handshake_step,
    header_block_complete,
    read_available,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_addresses_are_limited_each_on_their_own_and_freed_when_finished():
    gate = HeaderGate(per_address=2, timeout=10, clock=FakeClock())
    first = gate.start("c1", ("10.0.0.1", 5001))
    gate.start("c2", ("10.0.0.1", 5002))  # another port of the same client counts too
    assert not gate.admits(("10.0.0.1", 5003))
    assert gate.admits(("10.0.0.2", 5001))
    gate.finish(first)
    assert gate.admits(("10.0.0.1", 5003))


def test_no_limit_and_no_deadline_when_set_to_zero():
    clock = FakeClock()
    gate = HeaderGate(per_address=0, timeout=0, clock=clock)
    for port in range(100):
        assert gate.admits(("10.0.0.1", port))
        gate.start(port, ("10.0.0.1", port))
    clock.now += 1e6
    assert gate.expired() == [] and gate.seconds_to_next_deadline() is None


def test_deadlines_pass_in_arrival_order():
    clock = FakeClock()
    gate = HeaderGate(per_address=0, timeout=10, clock=clock)
    early = gate.start("early", ("10.0.0.1", 1))
    clock.now += 4
    late = gate.start("late", ("10.0.0.2", 1))
    assert gate.seconds_to_next_deadline() == pytest.approx(6)
    clock.now += 6
    assert gate.expired() == [early]
    gate.finish(early)
    assert gate.seconds_to_next_deadline() == pytest.approx(4)
    clock.now += 4
    assert gate.expired() == [late]


@pytest.mark.parametrize("cut", range(1, 4))
def test_an_ending_split_between_two_reads_is_found(cut):
    block = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    gathering = Gathering(conn=None, address="a", deadline=None)
    assert not gathering.feed(block[: len(block) - 4 + cut])
    assert gathering.feed(block[len(block) - 4 + cut:])


def test_a_bare_lf_ending_and_an_oversized_block_go_to_the_parser():
    assert header_block_complete(b"GET / HTTP/1.1\nHost: x\n\n")
    assert not header_block_complete(b"GET / HTTP/1.1\r\nX: " + b"a" * (GATHER_LIMIT - 100))
    assert header_block_complete(b"GET / HTTP/1.1\r\nX: " + b"a" * GATHER_LIMIT)


def test_read_available_takes_what_has_come_and_notices_the_end():
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        assert read_available(server) == (b"", False)  # nothing yet: no wait
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert read_available(server) == (b"GET / HTTP/1.1\r\n", False)
        client.sendall(b"x" * 100)
        client.shutdown(socket.SHUT_WR)
        assert read_available(server) == (b"x" * 100, True)


def test_read_available_holds_at_most_its_limit():
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        client.sendall(b"y" * 5000)
        data, closed = read_available(server, limit=3000)
        assert len(data) == 3000 and not closed


def test_a_tls_handshake_advances_without_blocking(tmp_path):
    certs = issue_server_cert(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certs.cert_file, certs.key_file)
    client_context = ssl.create_default_context(cafile=str(certs.ca_file))
    raw_server, raw_client = socket.socketpair()
    raw_server.setblocking(False)
    server = server_context.wrap_socket(raw_server, server_side=True, do_handshake_on_connect=False)
    assert not handshake_step(server)  # no ClientHello yet

    received: list[bytes] = []

    def client() -> None:
        with client_context.wrap_socket(raw_client, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
            received.append(tls.recv(10))

    thread = threading.Thread(target=client)
    thread.start()
    while not handshake_step(server):
        select.select([server], [], [], 5)
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        select.select([server], [], [], 5)
        data += read_available(server)[0]
    assert data == b"GET / HTTP/1.1\r\n\r\n"
    server.setblocking(True)
    server.sendall(b"done")
    thread.join(10)
    server.close()
    assert received == [b"done"]


def test_a_failed_handshake_raises():
    raw_server, raw_client = socket.socketpair()
    with raw_client:
        raw_server.setblocking(False)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server = context.wrap_socket(raw_server, server_side=True, do_handshake_on_connect=False)
        raw_client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            handshake_step(server)
        server.close()
