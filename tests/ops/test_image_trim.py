"""The image's venv without the parts the Dockerfile removes still runs the service.

The build stage deletes named parts of the locked wheels (an accelerator, NPU plugins and
tools LiteRT never loads for CPU inference, zstandard's unused CFFI backend, numpy's test
suites, ONNX Runtime's offline tooling) and the venv's own pip and setuptools. This test
builds the same venv without a Docker engine: a fresh ``python -m venv --without-pip``
holding exactly the locked distributions (taken from this venv, the same versions), with
the Dockerfile's own ``rm`` list applied; then, in it, imports every module of the service
and runs both engines (with their host artifacts: XNNPACK's weight cache goes through
LiteRT's environment) and a zstd delta round trip, and compares the detections with this
venv's.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.ops.test_dockerfile import parse_dockerfile, shell_segments
from tests.support.paths import DEFAULT_MODEL, IMAGES, MODELS, PROJECT_ROOT

SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"  # of the venv built here

_SMOKE = r"""
import importlib, json, os, pkgutil, shutil, sys
from pathlib import Path

import service, workers
for package in (service, workers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)

import zstandard
from service.update.delta import apply_patch, build_patch
from service.update.validation import validate_model_dir
from twinfer.engines.artifacts import find_host_artifact
from twinfer.engines.base import EngineOptions
from twinfer.loader import find_model_file, load_model

work, picture = Path(sys.argv[1]), Path(sys.argv[2])
results = {"zstd_backend": zstandard.backend}
for case in json.loads(sys.argv[3]):
    directory = work / case["name"]
    directory.mkdir()
    for source in case["files"]:
        shutil.copy(source, directory / Path(source).name)
    validate_model_dir(directory, case["name"], "1.0.0")  # builds the host artifact
    artifact = find_host_artifact(find_model_file(directory))
    model = load_model(directory, case["name"], "1.0.0", EngineOptions())
    found = model.detect(picture.read_bytes(), 50_000_000).detections
    results[case["name"]] = {
        "artifact": artifact is not None,
        "detections": [[model.label(int(c)), round(float(s), 3)] for c, s in zip(found.class_ids, found.scores)],
    }
base, new = work / "base.bin", work / "new.bin"
base.write_bytes(os.urandom(1 << 16))
new.write_bytes(base.read_bytes()[:40000] + b"changed" + base.read_bytes()[40000:])
build_patch(base, new, work / "patch.zst")
apply_patch(base, work / "patch.zst", work / "out.bin", max_output_bytes=1 << 20)
results["delta"] = (work / "out.bin").read_bytes() == new.read_bytes()
print(json.dumps(results))
"""

CASES = [
    {"name": "ssd-onnx", "files": [str(DEFAULT_MODEL / n) for n in ("model.onnx", "labels.txt", "twinfer.json")]},
    {"name": "ssd-tflite", "files": [str(MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite"), str(MODELS / "oidv4_labelmap.txt")]},
]


def trim_paths() -> list[str]:
    """The paths of the build stage's ``cd <site-packages> && rm -rf ...``."""
    build = parse_dockerfile((PROJECT_ROOT / "Dockerfile").read_text())[0]
    python = re.search(r"python:(\d+\.\d+)", build.base).group(1)
    for instruction in build.all("RUN"):
        segments = shell_segments(instruction.args)
        if segments[0][:1] == ["cd"] and segments[0][1].endswith("/site-packages"):
            removed = [word for words in segments[1:] if words[:2] == ["rm", "-rf"] for word in words[2:]]
            assert segments[0][1] == f"/opt/venv/lib/python{python}/site-packages", "not the image venv's"
            return removed
    pytest.fail("the Dockerfile's build stage has no `cd .../site-packages && rm -rf ...` step")


def locked_distributions() -> list[metadata.Distribution]:
    names = [line.split("#")[0].split("==")[0].strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()]
    return [metadata.distribution(name) for name in names if name]


def top_level_entries(distribution: metadata.Distribution) -> set[str]:
    """The names a distribution puts into site-packages (packages, modules, .libs, dist-info)."""
    entries = {Path(str(file)).parts[0] for file in distribution.files or [] if not str(file).startswith("..")}
    return entries - {"__pycache__"}  # top-level modules' bytecode: shared, and rebuilt on import


@pytest.fixture(scope="module")
def trimmed_venv(tmp_path_factory) -> Path:
    removed = trim_paths()
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    source, target = Path(metadata.distribution("numpy").locate_file("")), venv / SITE
    touched = {Path(pattern).parts[0] for pattern in removed}
    for distribution in locked_distributions():
        for entry in top_level_entries(distribution):
            if entry in touched:  # a real copy: nothing of the original may be found through a link
                copy = shutil.copytree if (source / entry).is_dir() else shutil.copy2
                copy(source / entry, target / entry)
            else:
                (target / entry).symlink_to(source / entry)
    locked = {entry for distribution in locked_distributions() for entry in top_level_entries(distribution)}
    for pattern in removed:
        matches = glob.glob(pattern, root_dir=target)
        if Path(pattern).parts[0].split("-")[0] in {Path(e).parts[0].split("-")[0] for e in locked}:
            assert matches, f"the Dockerfile removes {pattern}, which the locked wheels no longer have"
        for match in matches:
            path = target / match
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return venv


def _smoke(python: Path, work: Path) -> dict:
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(work)
    result = subprocess.run(
        [str(python), "-c", _SMOKE, str(work), str(IMAGES / "chelsea.png"), json.dumps(CASES)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.processes
def test_the_trimmed_venv_runs_both_engines_and_deltas_like_the_full_one(trimmed_venv, tmp_path):
    assert not (trimmed_venv / SITE / "pip").exists() and not (trimmed_venv / SITE / "setuptools").exists()
    trimmed = _smoke(trimmed_venv / "bin" / "python", tmp_path / "trimmed")
    full = _smoke(Path(sys.executable), tmp_path / "full")
    assert trimmed == full
    assert trimmed["zstd_backend"] == "cext" and trimmed["delta"] is True
    for case in CASES:
        assert trimmed[case["name"]]["artifact"], case["name"]
        assert trimmed[case["name"]]["detections"], case["name"]


def test_the_trim_step_removes_only_named_paths():
    """Named parts, no wildcard above a package (a slip like ``rm -rf *`` would empty the venv)."""
    removed = trim_paths()
    assert removed
    for pattern in removed:
        assert not pattern.startswith(("/", "..", "*", ".")), pattern
