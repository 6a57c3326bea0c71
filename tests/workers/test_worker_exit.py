"""A worker ends with ``os._exit`` (gunicorn.conf.py ``worker_exit``): the master must still
see the exit code gunicorn gave it, or a worker that cannot load the app would be
restarted forever instead of stopping the server with the reason."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import PROJECT_ROOT
from tests.support.service_process import free_port

pytestmark = pytest.mark.processes  # every test here starts processes


def test_a_worker_that_cannot_load_the_app_still_stops_gunicorn_with_its_exit_code(tmp_path):
    env = dict(
        os.environ, TWINFER_STORE=str(tmp_path), TWINFER_WORKERS="1",
        TWINFER_HTTP_HOST="127.0.0.1", TWINFER_HTTP_PORT=str(free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "no_such_module:app"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    assert "Worker exiting" in done.stderr
    assert "Reason: Worker failed to boot." in done.stderr, done.stderr  # the master read WORKER_BOOT_ERROR (3)
    assert done.returncode == 3, done.stderr
