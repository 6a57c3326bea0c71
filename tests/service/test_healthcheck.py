"""The container's HEALTHCHECK (``python -m service.healthcheck``) against a real service:
it asks the address the service listens on, never a proxy.

Docker runs the check inside the container with the container's environment, so an
``http_proxy`` set for downloads is there too; a check that went through it would call a
healthy module unhealthy (and get it restarted)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from service.healthcheck import probe_host
from tests.support.paths import PROJECT_ROOT
from tests.support.service_process import ServiceProcess, free_port

ADDRESS = "127.0.0.2"  # a loopback address that is not 127.0.0.1: only a check that follows TWINFER_HTTP_HOST finds it
PROXY_NAMES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


def _wait_healthz(url: str, service: ServiceProcess) -> None:
    session = requests.Session()
    session.trust_env = False  # this wait must not go through a proxy either
    service.wait_until(lambda: session.get(url + "/healthz", timeout=2).status_code == 200, "/healthz not answering")


@pytest.fixture(scope="module")
def on_address(tmp_path_factory):
    """The real service listening on ADDRESS only."""
    store = tmp_path_factory.mktemp("healthcheck") / "store"
    env = {"TWINFER_HTTP_HOST": ADDRESS}
    with ServiceProcess.start(store, workers=1, extra_env=env, wait_ready=False) as service:
        _wait_healthz(f"http://{ADDRESS}:{service.port}", service)
        yield service


def _check(port: int, **env: str) -> int:
    """Exit code of the HEALTHCHECK command, with a proxy set that nothing listens on."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("TWINFER_") and k not in PROXY_NAMES}
    proxies = {name: dead_proxy for name in PROXY_NAMES if "no_" not in name.lower()}
    result = subprocess.run(
        [sys.executable, "-m", "service.healthcheck"],
        env={**base, **proxies, "TWINFER_HTTP_PORT": str(port), **env},
        cwd=PROJECT_ROOT, capture_output=True, timeout=30, check=False,
    )
    return result.returncode


@pytest.mark.processes
def test_the_check_asks_the_configured_address_and_ignores_the_proxy(on_address):
    assert _check(on_address.port, TWINFER_HTTP_HOST=ADDRESS) == 0
    # 127.0.0.1 is not where this service listens: the same check asked there is unhealthy.
    assert _check(on_address.port, TWINFER_HTTP_HOST="127.0.0.1") != 0


@pytest.mark.processes
@pytest.mark.parametrize("host", ["0.0.0.0", ""], ids=["all-interfaces", "unset"])
def test_a_wildcard_bind_is_checked_on_loopback_without_the_proxy(tmp_path, host):
    with ServiceProcess.start(tmp_path / "store", workers=1, wait_ready=False) as service:  # on 127.0.0.1
        _wait_healthz(service.url, service)
        env = {"TWINFER_HTTP_HOST": host} if host else {}
        assert _check(service.port, **env) == 0


@pytest.mark.parametrize(
    ("configured", "asked"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("  ", "127.0.0.1"), ("::", "::1"), ("[::]", "::1"),
     ("10.1.2.3", "10.1.2.3"), ("[fd00::7]", "fd00::7"), ("edge-gw.local", "edge-gw.local")],
)
def test_probe_host_maps_wildcards_to_loopback_and_keeps_a_specific_address(configured, asked):
    assert probe_host(configured) == asked
