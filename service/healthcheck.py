"""The container's HEALTHCHECK: ``python -m service.healthcheck`` exits 0 when the module is healthy.

Serving: ``GET /healthz`` answers on the configured port, over TLS when ``TWINFER_TLS_CERT`` is
set (the loopback certificate is not verified: the check is about liveness, not identity;
``/healthz`` needs no token). Headless (``TWINFER_SERVE=0``): there is no HTTP, and the
supervisor being alive (it is what runs this container) is the health.
"""
from __future__ import annotations

import os
import ssl
import sys
import urllib.request

from workers.settings import env_bool


def healthy(timeout: float = 4.0) -> bool:
    if not env_bool("TWINFER_SERVE", True):
        return True
    tls = bool(os.environ.get("TWINFER_TLS_CERT", "").strip())
    url = f"{'https' if tls else 'http'}://127.0.0.1:{os.environ.get('TWINFER_HTTP_PORT', '8080')}/healthz"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 (loopback liveness only)
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(0 if healthy() else 1)
