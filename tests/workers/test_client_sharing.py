"""Several workers share busy kept-alive clients (workers/gunicorn_workers.py,
workers/inference_slots.py): real gunicorn, 2 workers, the bundled detector.

Eight HTTP/1.1 clients open their connections at once, then post back to back. Left to
gunicorn's gthread worker, whichever worker accepted a connection keeps it for good, and
one worker could end up with most of them while the other idles. A worker whose slot
has a queue ends connections instead, so both serve a fair share; a lone client still
keeps its connection.
"""
from __future__ import annotations

import http.client
import threading
from collections import Counter

import pytest

from tests.support.http_client import post_jpeg
from tests.support.images import encoded
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes

PICTURE = encoded(".jpg", 320, 240, seed=3)
CLIENTS = 8
REQUESTS_EACH = 12


@pytest.fixture
def service(tmp_path):
    """A service of its own per test: a worker that saw clients wait keeps ending
    connections for a second (workers.gunicorn_workers.CONTENTION_MEMORY)."""
    with ServiceProcess.start(tmp_path / "store", workers=2) as running:
        yield running


def test_busy_kept_alive_clients_are_shared_by_both_workers(service):
    connections = [http.client.HTTPConnection("127.0.0.1", service.port, timeout=60) for _ in range(CLIENTS)]
    for conn in connections:
        conn.connect()  # all accepted before the first request
    served: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client(conn: http.client.HTTPConnection) -> None:
        for _ in range(REQUESTS_EACH):
            answer = post_jpeg(conn, PICTURE)  # reconnects by itself after a Connection: close
            with lock:
                statuses[answer.status] += 1
                served[int(answer.getheader("X-Twinfer-Worker"))] += 1

    threads = [threading.Thread(target=client, args=(conn,)) for conn in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for conn in connections:
        conn.close()
    total = CLIENTS * REQUESTS_EACH
    assert statuses == {200: total}
    assert len(served) == 2 and min(served.values()) >= 0.3 * total, served


def test_a_lone_client_keeps_its_connection(service):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    assert post_jpeg(conn, PICTURE).status == 200
    local = conn.sock.getsockname()
    for _ in range(20):
        answer = post_jpeg(conn, PICTURE)
        assert answer.status == 200 and answer.getheader("Connection") != "close"
    assert conn.sock.getsockname() == local
    conn.close()
