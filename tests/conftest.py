"""Shared fixtures: paths to the real models and photos, and a real running service."""
from __future__ import annotations

import pytest

from tests.support.paths import IMAGES, MODELS, PROJECT_ROOT
from tests.support.service_process import ServiceProcess


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


__all__ = ["PROJECT_ROOT"]
