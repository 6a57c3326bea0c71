"""twinfer as an installable package: ``pip wheel .`` builds, and the installed copy runs
(its ``twinfer`` script and the supervisor's children) from a directory that is not the
checkout, with nothing of the checkout on the import path."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from tests.support.paths import DEFAULT_MODEL, IMAGES, PACKAGES, PROJECT_ROOT
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources: setuptools leaves build/ and *.egg-info beside them."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", source)
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source, check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("twinfer-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own (dependencies from this venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    return target


def installed_env(site: Path) -> dict[str, str]:
    """The installed copy first on the path; the checkout's packages are not on it."""
    return dict(os.environ, PYTHONPATH=str(site))


def test_the_wheel_holds_both_processes_packages_their_data_and_the_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for needed in ("service/cli.py", "service/commands/run.py", "workers/app.py", "workers/gunicorn_config.py",
                   "workers/openapi.json", "workers/kserve/codec.py", "twinfer/loader.py", "twinfer/engines/onnx.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "ops/", "models/"))]
    assert "twinfer = service.cli:main" in entry_points


def test_the_installed_script_answers_help_from_any_directory(installed, tmp_path):
    done = subprocess.run(
        [str(installed / "bin" / "twinfer"), "--help"], cwd=tmp_path, env=installed_env(installed),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: twinfer")
    for command in ("run", "bundle", "set-model", "status"):
        assert command in done.stdout


def test_the_installed_service_serves_from_another_directory(installed, tmp_path):
    """The supervisor finds gunicorn's settings and the workers' app by module name, so
    the service runs from wherever it is installed (here: not the checkout)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    extra_env = {"PYTHONPATH": str(installed), "TWINFER_DEFAULT_MODEL_DIR": str(DEFAULT_MODEL)}  # demo model: checkout's
    with ServiceProcess.start(
        tmp_path / "store", workers=1, extra_env=extra_env, command=[str(installed / "bin" / "twinfer")], cwd=elsewhere,
    ) as service:
        answer = requests.post(
            service.url + "/detect", data=(IMAGES / "chelsea.png").read_bytes(),
            headers={"Content-Type": "image/png"}, timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["detections"][0]["label"] == "Cat"
        assert requests.get(service.url + "/openapi.json", timeout=10).json()["openapi"]  # package data shipped
        (master,) = map(int, Path(f"/proc/{service.proc.pid}/task/{service.proc.pid}/children").read_text().split())
        assert b"python:workers.gunicorn_config" in Path(f"/proc/{master}/cmdline").read_bytes().split(b"\0")
