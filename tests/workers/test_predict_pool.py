"""Every task served side by side by a real gunicorn pool of two workers, rolled out from
a local twin: POST /predict's envelope per task, chained models fed by their detectors,
/detect's 409 for the others, KServe's raw tensors, bad input, and swaps of every task
(detectors included) under load with no failed request."""
from __future__ import annotations

import base64
import re
import time

import cv2
import numpy as np
import pytest
import requests

from tests.support.client_load import ClientLoad
from tests.support.paths import IMAGES
from tests.support.service_process import ServiceProcess
from tests.support.task_models import mediapipe_tasks, model_files, planted_classifier
from tests.support.task_pool import serving_task_pool

pytestmark = pytest.mark.processes  # every test here starts processes

ASTRONAUT = (IMAGES / "astronaut.png").read_bytes()
LOGITS = [0.5, 3.0, -1.0, 2.0]
TASK_BUNDLES = {**mediapipe_tasks(), "kind": model_files("planted.onnx", {"top_k": 2}, ["zero", "one", "two", "three"],
                                                      model_bytes=planted_classifier(LOGITS))}


def _predict(service: ServiceProcess, model: str | None, image: bytes = ASTRONAUT, **params) -> requests.Response:
    query = {**({"model": model} if model else {}), **params}
    return requests.post(service.url + "/predict", params=query, data=image, timeout=60)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with serving_task_pool(tmp_path_factory.mktemp("tasks") / "store", TASK_BUNDLES) as pool:
        yield pool


def test_every_task_answers_predict_in_one_envelope(pool):
    service = pool.service
    for _ in range(2):  # both workers, most likely
        answers = {name: _predict(service, name) for name in TASK_BUNDLES}
        for name, answer in answers.items():
            assert answer.status_code == 200, (name, answer.text)
            body = answer.json()
            assert body["model"]["name"] == name and body["image"] == {"width": 512, "height": 512, "format": "PNG"}
            assert answer.headers["X-Model-Version"] == body["model"]["version"]
            assert body["timing_ms"]["total"] > 0
        selfie = answers["selfie"].json()
        assert selfie["task"] == "segmentation"
        person = next(c for c in selfie["classes"] if c["label"] == "person")
        assert 0.2 < person["coverage"] < 0.8
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(selfie["mask"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (512, 512) and mask[256, 256] == 1 and mask[5, 5] == 0
        pose = answers["pose"].json()
        assert pose["task"] == "keypoints" and pose["detector"]["name"] == "pose-detector" and pose["crops"] == 1
        (body,) = pose["instances"]
        points = {p["name"]: p for p in body["keypoints"]}
        assert len(points) == 33 and points["left_shoulder"]["y_px"] > points["nose"]["y_px"]
        assert {"x", "y", "x_px", "y_px", "z", "visibility", "presence"} <= set(points["nose"])
        assert body["detection"]["label"] == "person" and body["roi"]["rotation_degrees"] != 0
        assert set(pose["timing_ms"]) == {"decode", "detector", "crop", "inference", "total"}
        mesh = answers["mesh"].json()
        assert len(mesh["instances"][0]["keypoints"]) == 468 and mesh["detector"]["name"] == "face"
        kind = answers["kind"].json()
        assert kind["task"] == "classification"
        assert [c["label"] for c in kind["classes"]] == ["one", "three"]
        face = answers["face"].json()
        assert face["task"] == "detection" and len(face["detections"][0]["keypoints"]) == 6
        default = _predict(service, None, (IMAGES / "chelsea.png").read_bytes())
        detect = requests.post(service.url + "/detect", data=(IMAGES / "chelsea.png").read_bytes(), timeout=30)
        assert default.json()["detections"] == detect.json()["detections"]
        assert default.json()["detections"][0]["label"] == "Cat"


def test_options_formats_and_listing(pool):
    service = pool.service
    rle = _predict(service, "selfie", format="rle").json()["mask"]
    assert rle["encoding"] == "rle" and [r["class_id"] for r in rle["runs"]] == [1]
    assert sum(rle["runs"][0]["counts"]) == 512 * 512
    assert [c["label"] for c in _predict(service, "kind", top_k=3).json()["classes"]] == ["one", "three", "zero"]
    assert _predict(service, "pose", threshold=1.0).json()["instances"] == []
    listing = {m["name"]: m for m in requests.get(service.url + "/models", timeout=10).json()["models"]}
    assert {name: m["task"] for name, m in listing.items()} == {
        "ssd-mobilenetv2-oidv4": "detection", "selfie": "segmentation", "pose-detector": "detection",
        "pose": "keypoints", "face": "detection", "mesh": "keypoints", "kind": "classification"}
    assert listing["pose"]["keypoints"]["names"][0] == "nose" and [11, 12] in listing["pose"]["keypoints"]["edges"]
    assert listing["pose"]["chain"]["detector"] == "pose-detector"
    reported = pool.twin.reported()["models"]
    assert {name: reported[name]["active"]["task"] for name in ("selfie", "pose", "kind", "face")} == {
        "selfie": "segmentation", "pose": "keypoints", "kind": "classification", "face": "detection"}


def test_detect_refuses_other_tasks_and_predict_refuses_bad_input(pool):
    service = pool.service
    wrong = requests.post(service.url + "/detect", params={"model": "selfie"}, data=ASTRONAUT, timeout=30)
    assert wrong.status_code == 409 and wrong.json()["reason"] == "wrong_task"
    assert "/predict?model=selfie" in wrong.json()["error"]
    for model, body, params, status, reason in (
        ("pose", b"", {}, 400, "empty_body"),
        ("mesh", b"not a picture", {}, 400, "not_an_image"),
        ("selfie", ASTRONAUT[:5000], {}, 400, "corrupt_image"),
        ("selfie", ASTRONAUT, {"format": "gif"}, 400, "bad_parameter"),
        ("kind", ASTRONAUT, {"top_k": "0"}, 400, "bad_parameter"),
        ("pose", ASTRONAUT, {"max_crops": "99"}, 400, "bad_parameter"),
        ("nothing", ASTRONAUT, {}, 404, "model_not_found"),
    ):
        answer = _predict(service, model, body, **params)
        assert answer.status_code == status and answer.json()["reason"] == reason, (model, params, answer.text)


def test_kserve_serves_the_raw_tensors_of_every_task(pool):
    service = pool.service
    pixels = np.zeros((1, 256, 256, 3), np.float32).ravel().tolist()
    answer = requests.post(service.url + "/v2/models/pose/infer", timeout=60, json={"inputs": [
        {"name": "input_1", "datatype": "FP32", "shape": [1, 256, 256, 3], "data": pixels}]})
    assert answer.status_code == 200, answer.text
    shapes = sorted(tuple(o["shape"]) for o in answer.json()["outputs"])
    assert (1, 195) in shapes and (1, 256, 256, 1) in shapes and (1, 117) in shapes
    meta = requests.get(service.url + "/v2/models/selfie", timeout=10).json()
    assert meta["outputs"][0]["shape"] == [1, 256, 256, 1]
    assert meta["parameters"]["task"] == "segmentation" and "image_input" not in meta["parameters"]
    image_way = requests.post(service.url + "/v2/models/selfie/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(ASTRONAUT).decode()]}]})
    assert image_way.status_code == 409 and "/predict?model=selfie" in image_way.json()["error"]


def _answer(service: ServiceProcess, name: str) -> tuple[int, dict]:
    """(status, body) of one /predict, (0, the error) when the connection failed."""
    try:
        answer = _predict(service, name)
        return answer.status_code, answer.json()
    except (requests.RequestException, ValueError) as exc:
        return 0, {"error": repr(exc)}


def test_every_task_and_detector_swaps_under_load_without_a_failed_request(pool):
    service = pool.service
    with ClientLoad(list(TASK_BUNDLES), lambda name: _answer(service, name)) as load:
        time.sleep(0.5)
        for name in ("selfie", "kind", "pose-detector", "pose", "face", "mesh"):
            pool.desire({**pool.versions, name: str(next(pool.counter))})
            pool.wait_serving()
        time.sleep(0.5)
    for name, samples in load.samples.items():
        failed = [s for s in samples if s[0] != 200]
        assert not failed and len(samples) >= 5, (name, failed[:3], len(samples))
        versions = [body["model"]["version"] for _, body in samples]
        assert versions[-1] == pool.versions[name]
    for chained, detector in (("pose", "pose-detector"), ("mesh", "face")):
        seen = [body["detector"]["version"] for _, body in load.samples[chained]]
        assert seen[-1] == pool.versions[detector]  # the chain follows its detector's new version
        assert all(len(body["instances"]) == 1 for _, body in load.samples[chained])


def test_a_chain_without_its_detector_answers_503_and_recovers(pool):
    service = pool.service
    kept = {name: v for name, v in pool.versions.items() if name != "face"}
    pool.desire(kept)
    pool.twin.wait_reported(lambda r: "face" not in (r.get("models") or {}) or r["models"]["face"] is None, 60)
    service.wait_until(lambda: all(_predict(service, "mesh").status_code == 503 for _ in range(6)),
                       "both workers without face", 60)
    missing = _predict(service, "mesh")
    assert missing.json()["reason"] == "chain_unavailable" and "'face'" in missing.json()["error"]
    assert _chain_unfed(service) == {("mesh", "face"): 1.0, ("pose", "pose-detector"): 0.0}
    assert _predict(service, "pose").status_code == 200
    pool.desire({**kept, "face": str(next(pool.counter))})
    pool.wait_serving()
    service.wait_until(lambda: all(_predict(service, "mesh").status_code == 200 for _ in range(6)),
                       "the chain fed again on both workers", 60)
    assert _chain_unfed(service) == {("mesh", "face"): 0.0, ("pose", "pose-detector"): 0.0}


def _chain_unfed(service: ServiceProcess) -> dict[tuple[str, str], float]:
    """``twinfer_chain_unfed`` as scraped: (model, detector) -> value (max over the workers)."""
    samples = {}
    for line in requests.get(service.url + "/metrics", timeout=10).text.splitlines():
        found = re.match(r'twinfer_chain_unfed\{detector="([^"]+)",model="([^"]+)"\} (\S+)', line)
        if found:
            samples[(found.group(2), found.group(1))] = float(found.group(3))
    return samples
