"""API protection against the real service (supervisor + gunicorn, 2 workers): bearer
tokens and their rotation, TLS, the body deadline against slow clients, no write routes
beyond inference, and no secret in logs, reported properties or metrics."""
from __future__ import annotations

import json
import os
import re
import secrets
import select
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.bundles import face_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active, model_status
from tests.support.paths import IMAGES, PROJECT_ROOT
from tests.support.service_process import ServiceProcess, loaded_workers
from tests.support.tls import issue_server_cert
from tests.support.waiting import wait_until

pytestmark = pytest.mark.processes  # every test here starts processes

# Fresh per run, so a hit in a log can only come from this run.
TOKEN_A = "tok-a-" + secrets.token_urlsafe(24)
TOKEN_B = "tok-b-" + secrets.token_urlsafe(24)  # a second token: rotation by environment
TOKEN_FILE_1 = "tok-file1-" + secrets.token_urlsafe(24)
TOKEN_FILE_2 = "tok-file2-" + secrets.token_urlsafe(24)
NEAR_MISS = TOKEN_A[:-1] + ("x" if TOKEN_A[-1] != "x" else "y")  # refused; must not be logged either
SAS_SIG = "SASsig" + secrets.token_hex(12)
SECRETS = (TOKEN_A, TOKEN_B, TOKEN_FILE_1, TOKEN_FILE_2, NEAR_MISS, SAS_SIG)
PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
WRITE_METHODS = ("post", "put", "delete", "patch")
INFERENCE_WRITES = {
    "/detect": {"post"},
    "/predict": {"post"},
    "/v2/models/{name}/infer": {"post"},
    "/v2/models/{name}/versions/{version}/infer": {"post"},
    "/v2/repository/index": {"post"},  # a read, but Triton's protocol makes it a POST
}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _detect(url: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Content-Type": "image/png", **(_auth(token) if token else {})}
    return requests.post(url + "/detect", data=(IMAGES / "chelsea.png").read_bytes(), headers=headers, timeout=30, **kwargs)


def _assert_unauthorized(response: requests.Response, invalid_token: bool = False) -> None:
    assert response.status_code == 401, (response.request.url, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["reason"] == "unauthorized" and body["error"], body
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert ('error="invalid_token"' in challenge) == invalid_token, challenge


# --- bearer tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files():
    with FileServer() as server:
        yield server


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """Two tokens in the environment, one in a token file, /metrics public (the default),
    access log and debug logging on (so the secrets test reads everything gunicorn says)."""
    root = tmp_path_factory.mktemp("protected")
    token_file = root / "tokens.txt"
    token_file.write_text(f"# API tokens, one per line\n\n{TOKEN_FILE_1}\n")
    env = {
        "TWINFER_API_TOKENS": f"{TOKEN_A}, {TOKEN_B}",
        "TWINFER_API_TOKENS_FILE": str(token_file),
        "TWINFER_ACCESS_LOG": "-",
        "TWINFER_LOG_LEVEL": "debug",
        "TWINFER_REPORT_INTERVAL": "0.05",
    }
    with ServiceProcess.start(root / "store", workers=2, extra_env=env) as service:
        service.token_file = token_file
        yield service


def test_without_a_valid_token_everything_but_the_probes_is_401(protected):
    url = protected.url
    _assert_unauthorized(_detect(url))
    for path in ("/models", "/openapi.json", "/v2", "/v2/models/ssd-mobilenetv2-oidv4", "/nope", "/v2/repository/index"):
        _assert_unauthorized(requests.get(url + path, timeout=5))  # unknown paths too: no route probing
    _assert_unauthorized(requests.post(url + "/v2/models/ssd-mobilenetv2-oidv4/infer", data=b"{}", timeout=5))
    _assert_unauthorized(_detect(url, NEAR_MISS), invalid_token=True)
    _assert_unauthorized(requests.get(url + "/models", headers={"Authorization": TOKEN_A}, timeout=5))  # no scheme
    basic = requests.get(url + "/models", headers={"Authorization": f"Basic {TOKEN_A}"}, timeout=5)
    _assert_unauthorized(basic)
    _assert_unauthorized(requests.get(url + "/models", headers={"Authorization": "Bearer "}, timeout=5))
    for probe in PROBES:
        response = requests.get(url + probe, timeout=5)
        assert response.status_code == 200, (probe, response.text)
    assert requests.get(url + "/healthz/", timeout=5).status_code == 200  # trailing slash: same route
    metrics = requests.get(url + "/metrics", timeout=5)  # TWINFER_METRICS_PUBLIC defaults to true
    assert metrics.status_code == 200 and "twinfer_workers" in metrics.text


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(protected):
    """401 right after the headers, then the connection closes: nothing is drained."""
    with socket.create_connection(("127.0.0.1", protected.port), timeout=10) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000000000\r\n\r\n" + b"\xff" * 1024)
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401"), reply
    assert b'"reason":"unauthorized"' in reply and b"www-authenticate: bearer" in reply.lower()
    assert time.monotonic() - started < 2


def test_every_configured_token_is_accepted(protected):
    for token in (TOKEN_A, TOKEN_B, TOKEN_FILE_1):
        response = _detect(protected.url, token)
        assert response.status_code == 200, response.text
        assert response.json()["detections"][0]["label"] == "Cat"
        models = requests.get(protected.url + "/models", headers=_auth(token), timeout=5)
        assert models.status_code == 200 and models.json()["active"]["name"] == "ssd-mobilenetv2-oidv4"
    lower = requests.get(protected.url + "/models", headers={"Authorization": f"bearer {TOKEN_B}"}, timeout=5)
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 9110 11.1)


def test_token_file_rotation_without_a_restart(protected):
    """Add the new token, then drop the old one: each worker re-reads the file within ~1 s."""
    protected.token_file.with_suffix(".new").write_text(f"{TOKEN_FILE_1}\n{TOKEN_FILE_2}\n")
    protected.token_file.with_suffix(".new").replace(protected.token_file)
    _wait_for_tokens(protected.url, accepted=(TOKEN_FILE_1, TOKEN_FILE_2), refused=())
    protected.token_file.with_suffix(".new").write_text(f"{TOKEN_FILE_2}\n")
    protected.token_file.with_suffix(".new").replace(protected.token_file)
    _wait_for_tokens(protected.url, accepted=(TOKEN_FILE_2, TOKEN_A), refused=(TOKEN_FILE_1,))


def _wait_for_tokens(url: str, accepted: tuple[str, ...], refused: tuple[str, ...], timeout: float = 10.0) -> None:
    """Every worker (seen by pid) accepts ``accepted`` and refuses ``refused``."""
    def applied() -> bool:
        good_on: dict[str, set[str]] = {}
        with ThreadPoolExecutor(4) as pool:
            checks = [(t, True) for t in accepted] * 4 + [(t, False) for t in refused] * 4
            results = list(pool.map(lambda c: (c, requests.get(url + "/models", headers=_auth(c[0]), timeout=5)), checks))
        for (token, wanted), response in results:
            ok = response.status_code == (200 if wanted else 401)
            good_on.setdefault(response.headers["X-Twinfer-Worker"], set()).add(token if ok else "")
        return len(good_on) == 2 and all("" not in tokens for tokens in good_on.values())

    wait_until(applied, "the token file change applied on every worker", timeout, interval=0.3)


def test_refusals_are_counted_and_timed_as_401(protected):
    _assert_unauthorized(requests.get(protected.url + "/models", timeout=5))
    text = requests.get(protected.url + "/metrics", timeout=5).text
    refused = re.search(r'^twinfer_request_errors_total\{model="",reason="unauthorized"\} (\S+)$', text, re.M)
    assert refused and float(refused.group(1)) >= 1, text
    # RequestMetrics runs before the auth middleware, so 401s are in the latency histogram
    # too (route "unmatched": refused before routing).
    assert re.search(r'^twinfer_http_request_duration_seconds_count\{[^}]*status="401"[^}]*\} [1-9]', text, re.M)


def test_no_route_but_inference_accepts_writes(protected, tmp_path):
    """The HTTP API has no administrative action: models change only through the twin."""
    from twinfer.engines import EngineOptions
    from workers.app import create_app
    from workers.settings import WorkerSettings

    app = create_app(WorkerSettings(store=tmp_path, max_body_bytes=1024, max_image_pixels=10**6, engine=EngineOptions()))
    routes, nodes = {}, list(app._router._roots)
    while nodes:
        node = nodes.pop()
        if node.resource is not None:
            routes[node.uri_template] = node.resource
        nodes.extend(node.children)
    assert "/detect" in routes and "/models" in routes
    writers = {}
    for template, resource in routes.items():
        methods = {m for m in WRITE_METHODS if callable(getattr(resource, f"on_{m}", None))}
        if methods:
            writers[template] = methods
    assert writers == {t: m for t, m in INFERENCE_WRITES.items() if t in routes}, writers
    # and live, with a valid token: every other route refuses every write method
    for template in routes:
        path = template.replace("{name}", "ssd-mobilenetv2-oidv4").replace("{version}", "1.0.0")
        for method in WRITE_METHODS:
            if method in INFERENCE_WRITES.get(template, ()):
                continue
            response = requests.request(method, protected.url + path, headers=_auth(TOKEN_A), data=b"x", timeout=5)
            assert response.status_code == 405, (method, path, response.status_code)
    for method in WRITE_METHODS:  # the /v2 catch-all answers 404 to anything
        response = requests.request(method, protected.url + "/v2/repository/models/x/load", headers=_auth(TOKEN_A), timeout=5)
        assert response.status_code == 404, (method, response.status_code)


def test_token_comparison_checks_every_token(monkeypatch):
    """No early exit: a match on the first token costs as many comparisons as a miss."""
    import workers.auth as auth
    from workers.settings import AuthSettings

    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    tokens = auth.TokenSet(AuthSettings(tokens=(TOKEN_A, TOKEN_B, TOKEN_FILE_1)))
    for candidate, expected in ((TOKEN_A, True), (TOKEN_FILE_1, True), (NEAR_MISS, False), ("x", False)):
        calls.clear()
        assert tokens.accepts(candidate) is expected
        assert len(calls) == 3
    assert TOKEN_A not in repr(AuthSettings(tokens=(TOKEN_A,)))  # settings may be logged


# --- secrets ---------------------------------------------------------------------------------


def test_no_secret_in_log_reported_properties_or_metrics(protected, files):
    """Last test on this service: it rolls a model out from a SAS URL (and fails one first)."""
    twin = LocalTwinFiles(protected.store)
    twin.wait_reported(is_active("1.0.0"))
    bundle = face_bundle()
    files.put("/models/denied.zip", bundle.data)
    files.faults("/models/denied.zip").statuses = [403] * 20
    denied = files.url(f"/models/denied.zip?sv=2024-08-04&sr=b&sp=r&sig={SAS_SIG}")
    version = twin.set_desired(model_desired("face", "1.5.0", denied, bundle))
    twin.wait_reported(lambda r: model_status(r)["desired_version"] == version and model_status(r)["state"] == "failed")
    files.put("/models/face_2.0.0.zip", bundle.data)
    url = files.url(f"/models/face_2.0.0.zip?sv=2024-08-04&sr=b&sp=r&sig={SAS_SIG}")
    twin.set_desired(model_desired("face", "2.0.0", url, bundle))
    twin.wait_reported(is_active("2.0.0"))
    _assert_unauthorized(_detect(protected.url, NEAR_MISS), invalid_token=True)
    assert _detect(protected.url, TOKEN_A).status_code == 200
    places = {
        "service log": protected.log(),
        "reported properties": json.dumps(twin.reported()),
        "/metrics": requests.get(protected.url + "/metrics", timeout=5).text,
        "/models": requests.get(protected.url + "/models", headers=_auth(TOKEN_A), timeout=5).text,
    }
    assert "POST /detect" in places["service log"]  # the access log is on: requests were logged
    assert "redacted" in places["service log"]  # the SAS URL was logged, without its query
    for place, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret appears in the {place}"
        assert "sig=" not in text, f"a SAS signature appears in the {place}"


# --- /metrics protected, TLS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """https with a throwaway CA (trustme), one token, /metrics protected, a 2 s body deadline."""
    root = tmp_path_factory.mktemp("tls")
    certs = issue_server_cert(root / "certs")
    env = {
        "TWINFER_TLS_CERT": str(certs.cert_file),
        "TWINFER_TLS_KEY": str(certs.key_file),
        "TWINFER_API_TOKENS": TOKEN_A,
        "TWINFER_METRICS_PUBLIC": "false",
        "TWINFER_BODY_TIMEOUT": "2",
    }
    with ServiceProcess.start(root / "store", workers=2, extra_env=env, wait_ready=False) as service:
        service.https = f"https://127.0.0.1:{service.port}"
        service.ca = str(certs.ca_file)
        service.wait_workers_ready(2, url=service.https, headers=_auth(TOKEN_A), verify=service.ca)  # its default reads /metrics without a token over http
        yield service


def test_https_with_a_verified_certificate(tls):
    response = _detect(tls.https, TOKEN_A, verify=tls.ca)
    assert response.status_code == 200 and response.json()["detections"][0]["label"] == "Cat"
    assert requests.get(tls.https + "/healthz", verify=tls.ca, timeout=5).json() == {"status": "ok"}
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls.https + "/healthz", timeout=5)  # not a publicly trusted certificate
    with pytest.raises(requests.ConnectionError):
        requests.get(tls.url + "/healthz", timeout=5)  # no plain http on the TLS port


def test_metrics_need_a_token_when_not_public(tls):
    _assert_unauthorized(requests.get(tls.https + "/metrics", verify=tls.ca, timeout=5))
    response = requests.get(tls.https + "/metrics", headers=_auth(TOKEN_A), verify=tls.ca, timeout=5)
    assert response.status_code == 200 and loaded_workers(response.text) == 2
    assert requests.get(tls.https + "/readyz", verify=tls.ca, timeout=5).status_code == 200


def test_slow_body_over_tls_gets_408(tls):
    context = ssl.create_default_context(cafile=tls.ca)
    raw = socket.create_connection(("127.0.0.1", tls.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        status, held = _trickle(sock, token=TOKEN_A, limit_s=8)
    assert status == "408", status
    assert 1.8 <= held <= 5, held


# --- slow clients ----------------------------------------------------------------------------

BODY_TIMEOUT = 3.0
HEADER_TIMEOUT = 2.0


def _trickle(sock: socket.socket, token: str | None = None, limit_s: float = 20.0, interval: float = 0.5) -> tuple[str, float]:
    """Send a complete header block for a 100 kB upload, then the body one byte per
    ``interval``; return how the server ended it (status code or "closed") and when."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(
        f"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n{auth}Content-Length: 100000\r\n\r\n".encode()
    )
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if select.select([sock], [], [], interval)[0] or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return "closed", time.monotonic() - started
            held = time.monotonic() - started
            if not data:
                return "closed", held
            return data.split(b" ", 2)[1].decode(), held
        try:
            sock.sendall(b"\xff")
        except (BrokenPipeError, ConnectionResetError):
            return "closed", time.monotonic() - started
    return "still open", time.monotonic() - started


@pytest.fixture(scope="module")
def slow_target(tmp_path_factory):
    """gthread workers (the setting for untrusted networks: a slow client holds a thread,
    not a worker), with a short body deadline."""
    store = tmp_path_factory.mktemp("slow") / "store"
    env = {
        "TWINFER_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "TWINFER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "TWINFER_WORKER_CLASS": "gthread",
    }
    with ServiceProcess.start(store, workers=2, extra_env=env) as service:
        yield service


def test_slow_clients_do_not_take_the_pool_and_are_cut_at_the_deadline(slow_target):
    """K = workers x 2 clients trickle their bodies; normal clients keep getting answers
    meanwhile, and each slow one gets a 408 (or a closed connection) after the deadline."""
    slow_count = 2 * 2

    def slow_client(_):
        with socket.create_connection(("127.0.0.1", slow_target.port), timeout=10) as sock:
            return _trickle(sock)

    def normal_client(_):
        started = time.monotonic()
        response = _detect(slow_target.url)
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(slow_count + 2) as pool:
        slow = [pool.submit(slow_client, i) for i in range(slow_count)]
        time.sleep(0.5)  # the slow ones hold their workers / threads now
        normal = []
        until = time.monotonic() + BODY_TIMEOUT - 1.0
        while time.monotonic() < until:
            normal.extend(pool.map(normal_client, range(2)))
        endings = [f.result() for f in slow]
    assert len(normal) >= 4
    assert all(status == 200 for status, _ in normal), normal
    assert max(elapsed for _, elapsed in normal) < 2.0, normal
    for status, held in endings:
        assert status in ("408", "closed"), endings
        assert BODY_TIMEOUT - 0.2 <= held <= BODY_TIMEOUT + 3.0, endings
    text = requests.get(slow_target.url + "/metrics", timeout=5).text
    assert re.search(r'^twinfer_request_errors_total\{model="[^"]*",reason="body_timeout"\} [1-9]', text, re.M), text
    assert 'status="500"' not in text
    assert _detect(slow_target.url).status_code == 200  # and the pool is whole afterwards


def test_stalled_chunked_body_gets_408(slow_target):
    with socket.create_connection(("127.0.0.1", slow_target.port), timeout=10) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\n\x89PNG\r\n")
        started = time.monotonic()
        ready = select.select([sock], [], [], BODY_TIMEOUT + 5)[0]
        elapsed = time.monotonic() - started
        reply = b""
        while ready and (chunk := sock.recv(65536)):  # the server closes after the 408
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"reason":"body_timeout"' in reply
    assert BODY_TIMEOUT - 0.3 <= elapsed <= BODY_TIMEOUT + 2


def test_error_answers_to_uploads_close_kept_alive_connections_cleanly(slow_target):
    """After an error to a POST the connection closes, and the answer says so first: a
    client reusing its connection must never find it dropped under its next request."""
    png = (IMAGES / "chelsea.png").read_bytes()
    bad = [(b"not an image", "image/jpeg", 400), (b"text", "text/plain", 415), (png, "image/png", 200)]
    with requests.Session() as session:
        for round_ in range(8):
            for body, content_type, status in bad:
                response = session.post(slow_target.url + "/detect", data=body, headers={"Content-Type": content_type},
                                        timeout=30)
                assert response.status_code == status, response.text
                expected = "close" if status >= 400 else "keep-alive"
                assert response.headers["Connection"].lower() == expected, (status, response.headers)
            assert session.get(slow_target.url + "/models", timeout=5).headers["Connection"].lower() == "keep-alive"


def test_slowloris_headers_are_cut_at_the_header_deadline(slow_target):
    """A header block trickled one byte at a time: closed after TWINFER_HEADER_TIMEOUT
    (gunicorn itself has no limit there; the request never reaches the app)."""
    block = b"Host: test\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", slow_target.port), timeout=10) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\n")
        started = time.monotonic()
        ended = None
        for byte in block:
            if select.select([sock], [], [], 0.25)[0]:
                ended = sock.recv(65536)
                break
            sock.sendall(bytes([byte]))
        held = time.monotonic() - started
    assert ended == b"", ended  # closed without an answer
    assert HEADER_TIMEOUT - 0.3 <= held <= HEADER_TIMEOUT + 2, held
    assert _detect(slow_target.url).status_code == 200


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TWINFER_TLS_CERT": "/nonexistent/cert.pem"}, "TWINFER_TLS_CERT and TWINFER_TLS_KEY must be set together"),
        ({"TWINFER_API_TOKENS": "tooShort9"}, "TWINFER_API_TOKENS is shorter than 16 characters"),
        ({"TWINFER_API_TOKENS_FILE": "/nonexistent/tokens"}, "TWINFER_API_TOKENS_FILE /nonexistent/tokens"),
        ({"TWINFER_WORKER_CLASS": "eventlet"}, "TWINFER_WORKER_CLASS must be one of"),
    ],
    ids=["tls-cert-without-key", "short-token", "missing-token-file", "unknown-worker-class"],
)
def test_bad_protection_settings_stop_the_service_with_a_clear_error(tmp_path, env, message):
    with ServiceProcess.start(tmp_path / "store", workers=1, extra_env=env, wait_ready=False) as service:
        code = service.proc.wait(timeout=60)
        log = service.log()
    assert code != 0
    assert message in log, log
    assert "tooShort9" not in log  # the value of a refused token is not echoed either


def _dockerfile_healthcheck() -> list[str]:
    """The final stage's HEALTHCHECK command (exec form), as argv."""
    text = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.+\])$", text, re.M).group(1))


def test_the_container_healthcheck_follows_tls_and_fails_when_nothing_answers(tls):
    command = _dockerfile_healthcheck()
    assert command[:3] == ["python", "-m", "service.healthcheck"]
    argv = [sys.executable, *command[1:]]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWINFER_TLS", "TWINFER_SERVE"))}

    def exit_code(**env: str) -> int:
        return subprocess.run(argv, env={**base, **env}, cwd=PROJECT_ROOT, capture_output=True, timeout=30).returncode

    port = str(tls.port)
    assert exit_code(TWINFER_HTTP_PORT=port, TWINFER_TLS_CERT="/run/secrets/cert.pem") == 0
    assert exit_code(TWINFER_HTTP_PORT=port) != 0  # plain http to the TLS port: unhealthy
    assert exit_code(TWINFER_HTTP_PORT=port, TWINFER_SERVE="0") == 0  # headless: no HTTP to probe
