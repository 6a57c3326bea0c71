"""Several models at once: SSD (the bundled default) and BlazeFace (``models.face``) side by
side in a real gunicorn pool of two workers, each with its own twin entry, rollout, routes
and metrics."""
from __future__ import annotations

import base64
import os
import signal
import time
from dataclasses import dataclass, field
from itertools import count

import pytest
import requests

from tests.support.bundles import Bundle, face_bundle, ssd_tflite_bundle
from tests.support.client_load import ClientLoad
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles
from tests.support.paths import IMAGES
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.waiting import wait_until
from twinfer.manifest import read_manifest
from twinfer.worker_state import read_states

pytestmark = pytest.mark.processes  # every test here starts processes

BUDGET = 21 * 1024 * 1024  # the bundled SSD (19.9 MB) and BlazeFace fit; another SSD does not
CHELSEA = (IMAGES / "chelsea.png").read_bytes()
ASTRONAUT = (IMAGES / "astronaut.png").read_bytes()


@dataclass
class Pool:
    service: ServiceProcess
    twin: LocalTwinFiles
    files: FileServer
    bundles: dict[str, Bundle]
    versions: count = field(default_factory=lambda: count(2))  # face's versions only go up (rollback protection)
    face_version: str = "1"

    def face_entry(self, version: str, fmt: str) -> dict:
        bundle = self.bundles[fmt]
        return {"version": version, "url": self.files.url(f"/face-{fmt}.zip"), "sha256": bundle.sha256,
                "size": len(bundle.data)}

    def desire(self, models: dict) -> int:
        return self.twin.set_desired({"models": models})

    def face_serving(self, version: str):
        """Wait until every worker serves face ``version`` and the twin says so."""
        def done(reported: dict) -> bool:
            face = (reported.get("models") or {}).get("face") or {}
            rollout = face.get("rollout") or {}
            return (face.get("state") == "active" and face["active"]["version"] == version
                    and rollout.get("complete") and rollout.get("generation") == face["active"]["generation"])

        return self.twin.wait_reported(done, timeout=120)

    def ensure_face(self) -> None:
        """Face served, whatever an earlier test did."""
        manifest = read_manifest(self.service.store)
        if "face" in manifest.models and self.face_version == manifest.models["face"].version:
            self.desire({"face": self.face_entry(self.face_version, "tflite")})
            return
        self.face_version = str(next(self.versions))
        self.desire({"face": self.face_entry(self.face_version, "tflite")})
        self.face_serving(self.face_version)
        self.service.wait_until(lambda: _ready(self.service), "every worker ready with both models", 60)


def _ready(service: ServiceProcess) -> bool:
    return all(requests.get(service.url + "/readyz", timeout=5).status_code == 200 for _ in range(6))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    store = tmp_path_factory.mktemp("pool") / "store"
    env = {**QUICK_REPORTS, "TWINFER_MODEL_MEMORY_BUDGET": str(BUDGET)}
    with FileServer() as files, ServiceProcess.start(store, workers=2, extra_env=env) as service:
        bundles = {"tflite": face_bundle("tflite"), "onnx": face_bundle("onnx")}
        for fmt, bundle in bundles.items():
            files.put(f"/face-{fmt}.zip", bundle.data)
        pool = Pool(service, LocalTwinFiles(store), files, bundles, face_version="0")
        yield pool


@pytest.fixture()
def both(pool):
    pool.ensure_face()
    return pool


def _detect(service: ServiceProcess, image: bytes, model: str | None = None) -> requests.Response:
    params = {"model": model} if model else None
    return requests.post(service.url + "/detect", params=params, data=image, timeout=30)


def test_ssd_and_blazeface_serve_side_by_side_on_every_route(both):
    service = both.service
    for _ in range(4):  # both workers
        cat = _detect(service, CHELSEA)
        assert cat.status_code == 200 and cat.json()["detections"][0]["label"] == "Cat"
        assert cat.json()["model"]["name"] == "ssd-mobilenetv2-oidv4"
        faces = _detect(service, ASTRONAUT, "face")
        assert faces.status_code == 200 and faces.json()["model"]["name"] == "face"
        assert [d["label"] for d in faces.json()["detections"]] == ["face"]
    v2 = requests.post(service.url + "/v2/models/face/infer", timeout=30, json={"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(ASTRONAUT).decode()]}]})
    assert v2.status_code == 200 and v2.json()["model_name"] == "face"
    meta = requests.get(service.url + f"/v2/models/face/versions/{both.face_version}", timeout=10).json()
    assert meta["platform"] == "tensorflow_lite" and meta["name"] == "face"
    listing = requests.get(service.url + "/models", timeout=10).json()
    assert {m["name"]: m["default"] for m in listing["models"]} == {"ssd-mobilenetv2-oidv4": True, "face": False}
    assert listing["active"]["name"] == "ssd-mobilenetv2-oidv4"
    index = requests.post(service.url + "/v2/repository/index", timeout=10).json()
    assert {(m["name"], m["state"]) for m in index} == {("ssd-mobilenetv2-oidv4", "READY"), ("face", "READY")}
    unknown = _detect(service, CHELSEA, "pose")
    assert unknown.status_code == 404 and "face" in unknown.json()["error"] and "ssd-mobilenetv2-oidv4" in unknown.json()["error"]
    assert requests.get(service.url + "/v2/models/pose/ready", timeout=10).status_code == 404
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert 'twinfer_inference_duration_seconds_count{model="face"' in metrics
    assert any(line.startswith("twinfer_http_request_duration_seconds_count{") and 'model="face"' in line
               and 'route="/detect"' in line for line in metrics.splitlines())
    reported = both.twin.reported()
    assert reported["models"]["face"]["active"]["version"] == both.face_version
    assert reported["model"]["active"]["name"] == "ssd-mobilenetv2-oidv4"


def _version_answered(service: ServiceProcess, which: str) -> tuple[int, str | None]:
    """(status, X-Model-Version) of one /detect to ``which`` model ("ssd": the default one,
    "face"), (0, the error) when the connection failed."""
    image, model = (CHELSEA, None) if which == "ssd" else (ASTRONAUT, "face")
    try:
        r = _detect(service, image, model)
        return r.status_code, r.headers.get("X-Model-Version")
    except requests.RequestException as exc:
        return 0, repr(exc)


def test_ten_swaps_of_one_model_under_load_fail_no_request_and_leave_the_other_alone(both):
    service = both.service
    ssd_before = read_manifest(service.store).models["ssd-mobilenetv2-oidv4"]
    with ClientLoad(["ssd", "ssd", "face", "face"], lambda which: _version_answered(service, which)) as load:
        time.sleep(0.5)
        for i in range(10):
            version = str(next(both.versions))
            both.desire({"face": both.face_entry(version, "onnx" if i % 2 == 0 else "tflite")})
            both.face_serving(version)
            both.face_version = version
            assert read_manifest(service.store).models["ssd-mobilenetv2-oidv4"] == ssd_before
    for which, samples in load.samples.items():
        failed = [s for s in samples if s[0] != 200]
        assert not failed and len(samples) > 20, (which, failed[:5], len(samples))
    assert len({version for _, version in load.samples["face"]}) >= 5
    assert {version for _, version in load.samples["ssd"]} == {ssd_before.version}
    for state in read_states(service.store):
        assert state.generation_of("ssd-mobilenetv2-oidv4") == ssd_before.generation
        ssd_loads = [r for r in state.reloads if r["model"] == "ssd-mobilenetv2-oidv4" and r["ok"]]
        assert [r["generation"] for r in ssd_loads] == [ssd_before.generation]


def test_a_model_set_to_null_leaves_every_worker_and_its_routes_answer_404(both):
    service = both.service
    both.twin.set_desired({"models": {}})  # IoT Hub deletes a key set to null: the document no longer has it
    both.twin.wait_reported(lambda r: "face" not in (r.get("models") or {}) or r["models"]["face"] is None, timeout=60)

    def unloaded() -> bool:
        states = read_states(service.store)
        return len(states) == 2 and all("face" not in s.models for s in states)

    wait_until(unloaded, "face unloaded from both workers", 30)
    assert "face" not in read_manifest(service.store).models
    for _ in range(4):
        gone = _detect(service, ASTRONAUT, "face")
        assert gone.status_code == 404 and gone.json()["reason"] == "model_not_found"
        assert requests.post(service.url + "/v2/models/face/infer", json={"inputs": []}, timeout=10).status_code == 404
        assert _detect(service, CHELSEA).status_code == 200
    assert [m["name"] for m in requests.get(service.url + "/models", timeout=10).json()["models"]] == [
        "ssd-mobilenetv2-oidv4"]
    assert requests.get(service.url + "/readyz", timeout=10).status_code == 200


def test_a_model_over_the_memory_budget_is_refused_before_download_and_nothing_moves(both):
    service = both.service
    big = ssd_tflite_bundle()
    both.files.put("/big.zip", big.data)
    before = read_manifest(service.store)
    both.desire({"face": both.face_entry(both.face_version, "tflite"),
                 "big": {"version": "1", "url": both.files.url("/big.zip"), "sha256": big.sha256, "size": len(big.data)}})
    reported = both.twin.wait_reported(
        lambda r: ((r.get("models") or {}).get("big") or {}).get("state") == "failed", timeout=60)
    error = reported["models"]["big"]["last_error"]
    assert error["reason"] == "memory_budget"
    assert "TWINFER_MODEL_MEMORY_BUDGET of 21.0 MiB" in error["message"] and "face" in error["message"]
    assert both.files.requests_for("/big.zip") == []
    assert read_manifest(service.store) == before
    assert _detect(service, ASTRONAUT, "face").status_code == 200 and _detect(service, CHELSEA).status_code == 200


def test_a_worker_killed_with_9_comes_back_serving_every_model(both):
    service = both.service
    victim = read_states(service.store)[0].pid
    os.kill(victim, signal.SIGKILL)

    def respawned() -> list | None:
        states = read_states(service.store)
        fresh = [s for s in states if s.pid != victim]
        return fresh if len(fresh) == 2 and all(set(s.models) == {"ssd-mobilenetv2-oidv4", "face"} for s in fresh) else None

    states = wait_until(respawned, "the respawned worker serving both models", 60)
    manifest = read_manifest(service.store)
    for state in states:
        for name, entry in manifest.models.items():
            assert state.generation_of(name) == entry.generation
    service.wait_until(lambda: _ready(service), "both workers ready", 30)
    for _ in range(6):
        assert _detect(service, ASTRONAUT, "face").status_code == 200
        assert _detect(service, CHELSEA).status_code == 200
