"""The operator CLI as an operator runs it: ``python -m service <command>`` in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import PROJECT_ROOT


def cli(*args: str, store: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if store is not None:
        env["TWINFER_STORE"] = str(store)
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
