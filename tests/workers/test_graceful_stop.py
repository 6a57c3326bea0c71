"""Graceful stop with keep-alive clients (workers/gunicorn_workers.py): SIGTERM while clients
send back to back; no request a client sent may be reset or left unanswered.

Real supervisor, real gunicorn, both worker classes. Each client behaves like ``hey``: one
HTTP/1.1 connection reused until an answer says ``Connection: close``, then a new one at
once, until connecting is refused. Before the fix, the reconnect after the last answer was
queued on a listener no worker accepted from any more and reset when the worker exited.
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.support.http_client import post_jpeg
from tests.support.images import encoded
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes

PICTURE = encoded(".jpg", 64, 48, seed=7)
CLIENTS = 4
WARM_REQUESTS = 3  # per client before the SIGTERM
CLIENT_SECONDS = 25.0  # a bound: the stop ends every client long before


@dataclass
class Client:
    answers: list[int] = field(default_factory=list)  # status codes
    per_connection: list[int] = field(default_factory=list)  # answers on each connection
    last_connection_header: list[str | None] = field(default_factory=list)  # per connection
    failures: list[str] = field(default_factory=list)  # a request sent and not answered
    warm: threading.Event = field(default_factory=threading.Event)

    def run(self, port: int) -> None:
        deadline = time.monotonic() + CLIENT_SECONDS
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            try:
                conn.connect()
            except ConnectionRefusedError:
                return  # the service stopped listening: the clean end
            except OSError as error:
                self.failures.append(repr(error))
                return
            try:
                self._use(conn, deadline)
            except Exception as error:  # noqa: BLE001 - every way a sent request can fail
                self.failures.append(repr(error))
                return
            finally:
                conn.close()

    def _use(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        served = 0
        while time.monotonic() < deadline:
            answer = post_jpeg(conn, PICTURE)
            self.answers.append(answer.status)
            served += 1
            if len(self.answers) >= WARM_REQUESTS:
                self.warm.set()
            if answer.will_close:
                self.per_connection.append(served)
                self.last_connection_header.append(answer.getheader("Connection"))
                return


@pytest.fixture(params=[("gthread", 1), ("gthread", 2), ("sync", 2)], ids=["gthread-1", "gthread-2", "sync-2"])
def service(request, tmp_path):
    """One gthread worker keeps every connection alive; two end them while the other
    clients wait, so that both share them (workers.gunicorn_workers)."""
    worker_class, workers = request.param
    env = {"TWINFER_WORKER_CLASS": worker_class}
    with ServiceProcess.start(tmp_path / "store", workers=workers, extra_env=env) as running:
        yield worker_class, workers, running


def test_sigterm_answers_every_request_sent_and_resets_no_connection(service):
    worker_class, workers, running = service
    clients = [Client() for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client.run, args=(running.port,)) for client in clients]
    for thread in threads:
        thread.start()
    for client in clients:
        assert client.warm.wait(20), "a client got no answers before the stop"
    running.proc.terminate()
    for thread in threads:
        thread.join(CLIENT_SECONDS + 5)
        assert not thread.is_alive()
    assert running.proc.wait(15) == 0, running.log()

    assert [c.failures for c in clients] == [[]] * CLIENTS
    assert all(status == 200 for c in clients for status in c.answers)
    # Every connection ended with an answer that said so: the client was never cut off.
    assert all(header == "close" for c in clients for header in c.last_connection_header)
    assert all(len(c.per_connection) >= 1 for c in clients)
    if worker_class == "gthread" and workers == 1:  # sync closes after every answer
        assert max(n for c in clients for n in c.per_connection) > 1, "keep-alive was not exercised"
