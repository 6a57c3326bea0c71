"""The peer benchmark's report (ops/bench/peers/run.py): worker spread read from wrk's
output, and medians over interleaved rounds."""
from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ops.bench.peers import run


class _TwoWorkers(BaseHTTPRequestHandler):
    """Answers as if two workers took turns, naming them as twinfer does (lower case)."""

    served = 0
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).served += 1
        self.send_response(200)
        self.send_header("x-twinfer-worker", "101" if self.served % 4 else "202")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.mark.processes
def test_the_wrk_script_counts_the_answers_of_each_worker(tmp_path):
    assert shutil.which("wrk"), "make test installs wrk"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TwoWorkers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        picture = tmp_path / "p.jpg"
        picture.write_bytes(b"\xff\xd8 not really a picture")
        script = run.scripts_for("raw", tmp_path, {"p": picture})["p"]
        url = f"http://127.0.0.1:{server.server_address[1]}/detect"
        done = subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), url], capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
    answers = run.worker_answers(done.stdout)
    assert set(answers) == {"101", "202"}, done.stdout
    assert abs(answers["101"] / sum(answers.values()) - 0.75) < 0.05
    assert run.spread_text({"101": 3, "202": 1}) == "75/25"
    assert run.spread_text({}) == "-"


def _outcome(rps: list[float], p99: list[float], load: float) -> run.Outcome:
    rows = [
        run.Row("640x480", c, rps=r, p50_ms=10.0, p99_ms=p, cpu_ms_per_request=c + r / 100, requests=100, errors=0,
                workers={"1": int(r)})
        for c, r, p in zip((1, 8), rps, p99)
    ]
    return run.Outcome("twinfer", "t", "0.1.0", "ok", rows=rows, loads=[(load, load + 1)])


def test_medians_are_taken_per_figure_over_the_rounds():
    rounds = [_outcome([50, 100], [20, 90], 1.0), _outcome([60, 120], [30, 70], 2.0), _outcome([55, 80], [25, 200], 3.0)]
    merged = run.median_outcome(rounds)
    assert [(r.concurrency, r.rps, r.p99_ms) for r in merged.rows] == [(1, 55, 25), (8, 100, 90)]
    assert merged.rows[1].workers == {"1": 100}  # the median-rps round's spread
    assert merged.rows[1].requests == 300
    assert merged.loads == [(1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    failed = run.Outcome("twinfer", "t", "0.1.0", "start failed", reason="port in use")
    assert run.median_outcome([rounds[0], failed]).status == "start failed"
