"""The container's HEALTHCHECK: ``python -m service.healthcheck`` exits 0 when the module is healthy.

Serving: ``GET /healthz`` answers on the configured port, over TLS when ``TWINFER_TLS_CERT`` is
set (the loopback certificate is not verified: the check is about liveness, not identity;
``/healthz`` needs no token). Headless (``TWINFER_SERVE=0``): there is no HTTP, and the
supervisor being alive (it is what runs this container) is the health.

The check asks the address gunicorn binds (``TWINFER_HTTP_HOST``; a wildcard means
loopback) with ``http.client``, which reads no proxy variables: an ``http_proxy`` set in
the container for downloads must not turn a healthy module unhealthy.
"""
from __future__ import annotations

import http.client
import ssl
import sys

from twinfer.settings_table import read

WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def probe_host(configured: str) -> str:
    """Where to ask for TWINFER_HTTP_HOST: a wildcard bind answers on loopback; a specific
    address (or name) only there, so that is what is asked."""
    host = configured.strip().removeprefix("[").removesuffix("]")
    return WILDCARDS.get(host, host)


def healthy(timeout: float = 4.0) -> bool:
    if not read("TWINFER_SERVE"):
        return True
    host = probe_host(read("TWINFER_HTTP_HOST"))
    port = read("TWINFER_HTTP_PORT")
    if read("TWINFER_TLS_CERT") is not None:
        context = ssl._create_unverified_context()  # liveness of our own listener, not its identity
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(0 if healthy() else 1)
