"""Shared fixtures: paths to the real models and photos, and a real running service."""
from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tests.support.paths import DEFAULT_MODEL, IMAGES, MODELS, PROJECT_ROOT
from tests.support.service_process import ServiceProcess

_running: list[pytest.Item | None] = [None]  # the test being set up, run or torn down


def _refuse_unmarked(start: Callable) -> Callable:
    """``start`` (a way to start a process), refused for a test without the ``processes``
    marker, also inside the fixtures set up for it: the fast lane (``-m "not processes"``)
    stays fast, and a missing marker fails instead of slowing it down unseen."""

    @functools.wraps(start)
    def guarded(*args, **kwargs):
        item = _running[0]
        if item is not None and item.get_closest_marker("processes") is None:
            raise AssertionError(f"{item.nodeid} starts a process: mark it with @pytest.mark.processes")
        return start(*args, **kwargs)

    return guarded


def pytest_configure(config):
    subprocess.Popen._execute_child = _refuse_unmarked(subprocess.Popen._execute_child)
    os.fork = _refuse_unmarked(os.fork)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    _running[0] = item


@pytest.fixture(scope="session")
def images():
    return IMAGES


@pytest.fixture(scope="session")
def models():
    return MODELS


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """``python -m service`` with 2 gunicorn workers on 127.0.0.1, ready on both workers."""
    with ServiceProcess.start(tmp_path_factory.mktemp("store"), workers=2, extra_env={"TWINFER_MAX_BODY_BYTES": str(4 * 1024 * 1024)}) as proc:
        yield proc


@pytest.fixture(scope="module")
def bootstrapped_store(tmp_path_factory) -> Path:
    """A store with the bundled model staged and published, as the supervisor leaves it at start."""
    from service.bootstrap import ensure_active_model
    from service.repository import ModelRepository

    store = tmp_path_factory.mktemp("store")
    repo = ModelRepository(store)
    repo.prepare()
    ensure_active_model(repo, DEFAULT_MODEL, "ssd-mobilenetv2-oidv4", "1.0.0")
    return store


__all__ = ["PROJECT_ROOT"]
