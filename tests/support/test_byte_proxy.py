"""The byte-counting proxy the fleet benchmark puts in front of Azurite: every byte each way
is relayed and counted, over concurrent and keep-alive connections."""
from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.byte_proxy import ByteCountingProxy, ByteCounts
from tests.support.http_server import FileServer


def _raw_get(port: int, path: str) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request with Connection: close; (request bytes, whole response bytes)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return request, b"".join(chunks)


def test_counts_exactly_what_crosses_each_way_on_concurrent_connections():
    data = os.urandom(3 * 1024 * 1024 + 17)
    with FileServer({"/a.zip": data}) as files, ByteCountingProxy(files.port) as proxy:
        with ThreadPoolExecutor(4) as pool:
            exchanges = list(pool.map(lambda _: _raw_get(proxy.port, "/a.zip?sig=x"), range(4)))
        assert all(response.endswith(data) for _, response in exchanges)
        assert proxy.counts() == ByteCounts(
            up=sum(len(request) for request, _ in exchanges),
            down=sum(len(response) for _, response in exchanges),
            connections=4,
        )


def test_differences_measure_one_step_on_a_kept_alive_connection():
    with FileServer({"/small": b"x" * 1000, "/big": b"y" * 500_000}) as files, ByteCountingProxy(files.port) as proxy:
        with requests.Session() as session:
            session.get(f"http://127.0.0.1:{proxy.port}/small", timeout=10).raise_for_status()
            before = proxy.counts()
            session.get(f"http://127.0.0.1:{proxy.port}/big", timeout=10).raise_for_status()
            step = proxy.counts() - before
        assert step.connections == 0  # the same connection carried both requests
        assert 500_000 < step.down < 500_000 + 1024  # the body and one response's headers
        assert files.bytes_sent == 501_000
