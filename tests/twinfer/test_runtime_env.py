"""No ONNX Runtime telemetry in any process, and no runtime noise that reads like a fault.

ONNX Runtime reads ``ORT_DISABLE_TELEMETRY`` when it initialises; with telemetry on, its
official builds may create a device id under ``$HOME/.cache`` (and its uploader looks up
``mobile.events.data.microsoft.com``). Every process here gets a HOME of its own, so the
tests check both the switch each process carries and that nothing was written there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bundles import face_bundle, make_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, model_status
from tests.support.paths import MODELS, PROJECT_ROOT
from tests.support.service_process import ServiceProcess
from twinfer.runtime_env import RUNTIME_ENVIRONMENT

pytestmark = pytest.mark.processes  # every test here starts processes

OPEN_SESSION = (
    "import onnxruntime as ort; "
    f"ort.InferenceSession({str(MODELS / 'blazeface_short_range.onnx')!r}, providers=['CPUExecutionProvider'])"
)
# Non-actionable lines LiteRT printed on every load and exit (twinfer/native_stderr.py).
LITERT_NOISE = (
    "Failed to load plugin", "libopenvino", "Attempting to load plugin",  # vendor NPU plugins
    "Created TensorFlow Lite XNNPACK delegate", "RegisterAccelerator", "accelerator could not be loaded",
    "DestroyAccelerator",  # at every exit
)


def _open_session_after_importing_workers(home: Path) -> str:
    """A fresh interpreter that imports ``workers`` then opens an ONNX session; returns the
    telemetry switch as the runtime saw it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "XDG_"))}
    env.update(HOME=str(home), ORT_DISABLE_TELEMETRY="0")  # an inherited "0" must not turn it on
    code = "import workers; " + OPEN_SESSION + "; import os; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True, timeout=60, capture_output=True, text=True
    )
    return done.stdout.strip()


def test_importing_workers_turns_onnx_runtime_telemetry_off_before_a_session_opens(tmp_path):
    """Whether ORT writes its device id with telemetry on depends on the build and the
    machine (it did on the development machine, not on CI), so the proof is the switch the
    runtime read plus an untouched HOME, not a comparison with a run that has it on."""
    assert _open_session_after_importing_workers(tmp_path) == "1"
    assert not any(tmp_path.iterdir()), sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _rolled_out(version: str):
    def check(reported: dict) -> bool:
        status = model_status(reported)
        return status.get("state") == "active" and status["active"]["version"] == version and status["rollout"]["complete"]

    return check


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The bundled ONNX model, then a LiteRT and an ONNX update (each validated and prepared
    in a child process), then a model that does not load; the service is stopped before
    the tests look, so its log holds what every process printed at exit."""
    root = tmp_path_factory.mktemp("runtime-env")
    home = root / "home"
    home.mkdir()
    env = {"HOME": str(home), "ORT_DISABLE_TELEMETRY": "0", "TWINFER_REPORT_INTERVAL": "0.05"}
    with FileServer() as files, ServiceProcess.start(root / "store", workers=2, extra_env=env) as service:
        twin = LocalTwinFiles(service.store)
        pids = [service.proc.pid, *_descendants(service.proc.pid)]
        environs = {pid: _environ(pid) for pid in pids}
        for version, bundle in (("2.0.0", face_bundle("tflite")), ("3.0.0", face_bundle("onnx"))):
            files.put(f"/face-{version}.zip", bundle.data)
            twin.set_desired(model_desired("face", version, files.url(f"/face-{version}.zip"), bundle))
            twin.wait_reported(_rolled_out(version), timeout=120)
        broken = make_bundle({"face.tflite": b"TFL3 this is not a flatbuffer", "labels.txt": b"face\n"})
        files.put("/face-4.0.0.zip", broken.data)
        desired = twin.set_desired(model_desired("face", "4.0.0", files.url("/face-4.0.0.zip"), broken))
        reported = twin.wait_reported(
            lambda r: model_status(r).get("state") == "failed" and model_status(r)["desired_version"] == desired,
            timeout=120,
        )
    yield service, home, environs, model_status(reported)


def test_no_process_of_a_running_service_has_telemetry_on(service):
    running, home, environs, _ = service
    assert len(environs) >= 4, environs.keys()  # supervisor, gunicorn master, 2 workers
    children = {pid: env for pid, env in environs.items() if pid != running.proc.pid}
    for name, value in RUNTIME_ENVIRONMENT.items():
        assert {pid: env.get(name) for pid, env in children.items()} == dict.fromkeys(children, value)
    assert not any(home.iterdir()), sorted(p.relative_to(home) for p in home.rglob("*"))


def test_litert_loads_and_exits_log_no_runtime_noise_but_a_bad_model_is_still_an_error(service):
    running, _, _, status = service
    log = running.log()
    assert "face 2.0.0" in log and "face 3.0.0" in log  # the LiteRT and the ONNX model were served
    assert "Worker exiting" in log and "exited with code" not in log  # the workers ended, with code 0
    assert [line for line in log.splitlines() if any(noise in line for noise in LITERT_NOISE)] == []
    error = status["last_error"]["message"]
    assert error and f"model update failed ({status['last_error']['reason']}): {error}" in log
