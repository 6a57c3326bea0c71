"""Slow header blocks and TLS handshakes against the real service (supervisor + gunicorn,
one gthread worker with only two threads): connections that hold an unfinished header
block or ClientHello take no thread (workers/header_gate.py), and one client address may
hold at most TWINFER_CLIENT_PENDING_LIMIT of them per worker."""
from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import requests

from tests.support.paths import IMAGES
from tests.support.service_process import ServiceProcess
from tests.support.tls import issue_server_cert

pytestmark = pytest.mark.processes

THREADS = 2
PENDING_LIMIT = 10
# Long enough that nothing here is cut by the deadline: a held thread would stay held.
HEADER_TIMEOUT = 60
ENV = {
    "TWINFER_WORKER_CLASS": "gthread",
    "TWINFER_THREADS": str(THREADS),
    "TWINFER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "TWINFER_CLIENT_PENDING_LIMIT": str(PENDING_LIMIT),
}
PARTIAL_REQUEST = b"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
PICTURE = (IMAGES / "chelsea.png").read_bytes()


@pytest.fixture(scope="module")
def few_threads(tmp_path_factory):
    with ServiceProcess.start(tmp_path_factory.mktemp("gate") / "store", workers=1, extra_env=ENV) as service:
        yield service


@pytest.fixture(scope="module")
def few_threads_tls(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-tls")
    certs = issue_server_cert(root / "certs")
    env = {**ENV, "TWINFER_TLS_CERT": str(certs.cert_file), "TWINFER_TLS_KEY": str(certs.key_file)}
    with ServiceProcess.start(root / "store", workers=1, extra_env=env, wait_ready=False) as service:
        service.https = f"https://127.0.0.1:{service.port}"
        service.ca = str(certs.ca_file)
        service.wait_workers_ready(1, url=service.https, verify=service.ca)
        yield service


def _detect(url: str, **kwargs) -> int:
    """A normal client's request on a new connection; its status (a timeout fails the test)."""
    return requests.post(url + "/detect", data=PICTURE, headers={"Content-Type": "image/png", "Connection": "close"},
                         timeout=10, **kwargs).status_code


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    if not select.select([sock], [], [], within)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _dropped(service, reason: str) -> float:
    text = requests.get(service.url + "/metrics", timeout=10).text
    found = re.search(rf'^twinfer_connections_dropped_total\{{reason="{reason}"\}} (\S+)', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_unfinished_header_blocks_hold_no_thread(few_threads):
    """More unfinished header blocks than threads, on new connections and on kept-alive
    ones whose next request stalls halfway: normal clients are still answered at once."""
    with ExitStack() as held:
        for _ in range(THREADS + 3):
            sock = held.enter_context(_connect(few_threads.port))
            sock.sendall(PARTIAL_REQUEST)
        for _ in range(THREADS):  # a whole request answered, then half of the next one
            kept = http.client.HTTPConnection("127.0.0.1", few_threads.port, timeout=10)
            held.callback(kept.close)
            kept.request("GET", "/healthz")
            response = kept.getresponse()
            assert response.read() and response.status == 200 and not response.will_close
            kept.sock.sendall(PARTIAL_REQUEST)
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda _: _detect(few_threads.url), range(6)))
    assert statuses == [200] * 6


def test_one_address_may_hold_only_so_many_unfinished_connections(few_threads):
    """Connections from 127.0.0.2 beyond TWINFER_CLIENT_PENDING_LIMIT are closed at once;
    those within it stay open, and a client from another address is served meanwhile."""
    before = _dropped(few_threads, "client_limit")
    extra = 7
    with ExitStack() as held:
        socks = []
        for _ in range(PENDING_LIMIT + extra):
            sock = held.enter_context(_connect(few_threads.port, source="127.0.0.2"))
            sock.sendall(PARTIAL_REQUEST)
            socks.append(sock)
        closed = [sock for sock in socks if _closed_by_server(sock, within=2.0)]
        assert len(closed) == extra
        assert all(not _closed_by_server(sock, within=0.0) for sock in socks if sock not in closed)
        assert _detect(few_threads.url) == 200
    assert _dropped(few_threads, "client_limit") - before == extra


def test_a_header_block_split_anywhere_is_served(few_threads):
    """The gate finds the end of a header block whichever pieces it arrives in."""
    request = (b"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
               + f"Content-Length: {len(PICTURE)}\r\nConnection: close\r\n\r\n".encode() + PICTURE)
    end = request.index(b"\r\n\r\n")
    for cut in (end + 1, end + 2, end + 3, end + 4):
        with _connect(few_threads.port) as sock:
            sock.sendall(request[:cut])
            time.sleep(0.05)  # two segments; the test holds either way, this only makes the split likely
            sock.sendall(request[cut:])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), (cut, reply[:200])


def test_unfinished_tls_handshakes_hold_no_thread(few_threads_tls):
    """Eight connections that send one byte of a ClientHello, and as many that finish the
    handshake and then stall in their header block (each group from an address of its own,
    within the per-address limit): a normal https client is answered."""
    context = ssl.create_default_context(cafile=few_threads_tls.ca)
    with ExitStack() as held:
        for _ in range(8):
            held.enter_context(_connect(few_threads_tls.port, source="127.0.0.2")).sendall(b"\x16")
        for _ in range(8):
            raw = _connect(few_threads_tls.port, source="127.0.0.3")
            sock = held.enter_context(context.wrap_socket(raw, server_hostname="127.0.0.1"))
            sock.sendall(PARTIAL_REQUEST)
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda _: _detect(few_threads_tls.https, verify=few_threads_tls.ca), range(4)))
    assert statuses == [200] * 4


def test_a_failed_tls_handshake_is_counted_and_closed(few_threads_tls):
    with _connect(few_threads_tls.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # plain HTTP on the TLS port
        assert _closed_by_server(sock, within=10.0)
    metrics = requests.get(few_threads_tls.https + "/metrics", verify=few_threads_tls.ca, timeout=10).text
    assert re.search(r'^twinfer_connections_dropped_total\{reason="tls_handshake"\} [1-9]', metrics, re.M), metrics
