"""gthread keep-alive linger (workers/gunicorn_workers.py): back-to-back requests on one
connection stay in one pool thread; the worker's main (poller) thread is not woken for them.

Real gunicorn, one worker, one kept-alive HTTP/1.1 connection (http.client). The main
thread's context switches are read from /proc: gunicorn's own path wakes it at least once
per request (re-arming the connection in its poller), the linger path does not.
"""
from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from tests.support.http_client import post_jpeg
from tests.support.images import encoded
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes

PICTURE = encoded(".jpg", 64, 48, seed=7)
REQUESTS = 40


@pytest.fixture(scope="module", params=["0.005", "0"], ids=["linger", "no-linger"])
def one_worker(request, tmp_path_factory):
    store = tmp_path_factory.mktemp(f"linger-{request.param}") / "store"
    with ServiceProcess.start(store, workers=1, extra_env={"TWINFER_KEEPALIVE_LINGER": request.param}) as service:
        yield service, float(request.param)


def _main_thread_switches(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines())
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_back_to_back_requests_skip_the_poller_thread(one_worker):
    service, linger = one_worker
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    first = post_jpeg(conn, PICTURE)
    assert first.status == 200
    worker, local = int(first.getheader("X-Twinfer-Worker")), conn.sock.getsockname()
    before = _main_thread_switches(worker)
    for _ in range(REQUESTS):
        answer = post_jpeg(conn, PICTURE)
        assert answer.status == 200 and int(answer.getheader("X-Twinfer-Worker")) == worker
    per_request = (_main_thread_switches(worker) - before) / REQUESTS
    assert conn.sock.getsockname() == local, "the connection was not kept alive"
    conn.close()
    print(f"linger {linger}: main-thread context switches per request {per_request:.2f}")
    if linger > 0:
        assert per_request < 0.5, per_request  # only its 1 s heartbeat wakes it
    else:
        assert per_request >= 1, per_request  # the control: gunicorn's own path


def test_a_connection_idle_past_the_linger_goes_back_to_the_poller_and_is_served(one_worker):
    service, linger = one_worker
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    assert post_jpeg(conn, PICTURE).status == 200
    local = conn.sock.getsockname()
    time.sleep(max(0.2, 20 * linger))
    assert post_jpeg(conn, PICTURE).status == 200
    assert conn.sock.getsockname() == local
    conn.close()


@pytest.fixture(scope="module")
def two_threads(tmp_path_factory):
    store = tmp_path_factory.mktemp("linger-fair") / "store"
    with ServiceProcess.start(store, workers=1, extra_env={"TWINFER_THREADS": "2"}) as service:
        yield service


def test_lingering_threads_do_not_starve_a_waiting_connection(two_threads):
    """More back-to-back clients than threads: a thread must hand its connection back when
    another one waits, or the third client here would get nothing until the others stop."""
    served = [0, 0, 0]
    stop = time.monotonic() + 4.0

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", two_threads.port, timeout=30)
        while time.monotonic() < stop:
            assert post_jpeg(conn, PICTURE).status == 200
            served[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"requests per client: {served}")
    assert min(served) >= 0.25 * max(served), served
