"""Each model updates in its own lane: the real supervisor, one gunicorn worker, a real
HTTP file server. A slow or failing update of one model neither delays nor touches another,
and the reference design's keys still name the default model beside ``models``."""
from __future__ import annotations

import pytest
import requests

from tests.support.bundles import face_bundle, ssd_tflite_bundle
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active
from tests.support.paths import IMAGES
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.waiting import wait_until
from twinfer.manifest import read_manifest

pytestmark = pytest.mark.processes  # every test here starts processes


@pytest.fixture()
def device(tmp_path):
    with FileServer() as files, ServiceProcess.start(tmp_path / "store", workers=1, extra_env=QUICK_REPORTS) as service:
        twin = LocalTwinFiles(service.store)
        twin.wait_reported(is_active("1.0.0"))
        yield service, twin, files


def _entry(files: FileServer, path: str, bundle, version: str, **extra) -> dict:
    files.put(path, bundle.data)
    return {"version": version, "url": files.url(path), "sha256": bundle.sha256, "size": len(bundle.data), **extra}


def _model(reported: dict, name: str) -> dict:
    return (reported.get("models") or {}).get(name) or {}


def test_a_slow_download_of_one_model_does_not_delay_another_and_removing_it_cancels_it(device):
    service, twin, files = device
    slow = _entry(files, "/big.zip", ssd_tflite_bundle(), "1")
    files.faults("/big.zip").throttle_bps = 100_000  # ~100 s for the whole bundle
    twin.set_desired({"models": {"big": slow}})
    twin.wait_reported(lambda r: _model(r, "big").get("state") == "downloading"
                       and (_model(r, "big").get("progress") or {}).get("bytes", 0) > 0, timeout=60)
    face = _entry(files, "/face.zip", face_bundle(), "1", urgent=True)
    twin.set_desired({"models": {"big": slow, "face": face}})
    reported = twin.wait_reported(lambda r: _model(r, "face").get("state") == "active", timeout=60)
    assert _model(reported, "big")["state"] == "downloading"  # still at it
    answer = requests.post(service.url + "/detect?model=face", data=(IMAGES / "astronaut.png").read_bytes(), timeout=30)
    assert answer.status_code == 200 and len(answer.json()["detections"]) == 1
    twin.set_desired({"models": {"face": face}})  # big removed: its download stops and its bytes go
    twin.wait_reported(lambda r: _model(r, "big") == {}, timeout=60)  # a reported null deletes the property
    downloads = service.store / "staging" / "downloads"
    wait_until(lambda: not list(downloads.rglob("*.part*")), "the partial download of big removed", 30)
    assert set(read_manifest(service.store).models) == {"ssd-mobilenetv2-oidv4", "face"}


def test_a_failing_update_of_one_model_leaves_the_others_as_they_are(device):
    service, twin, files = device
    face = _entry(files, "/face.zip", face_bundle(), "1")
    twin.set_desired({"models": {"face": face}})
    twin.wait_reported(lambda r: _model(r, "face").get("state") == "active", timeout=60)
    before = read_manifest(service.store)
    default_report = twin.reported()["model"]
    bad = {**_entry(files, "/face2.zip", face_bundle("onnx"), "2"), "sha256": "0" * 64}
    twin.set_desired({"models": {"face": bad}})
    reported = twin.wait_reported(lambda r: _model(r, "face").get("state") == "failed", timeout=60)
    assert _model(reported, "face")["last_error"]["reason"] == "checksum_mismatch"
    assert _model(reported, "face")["active"]["version"] == "1"
    assert read_manifest(service.store) == before
    assert reported["model"]["active"] == default_report["active"] and reported["model"].get("last_error") is None


def test_malformed_models_change_nothing_and_say_why_on_the_default_model(device):
    service, twin, files = device
    before = read_manifest(service.store)
    twin.set_desired({"model": {"name": "face", "version": "1", "url": files.url("/x.zip"), "sha256": "0" * 64},
                      "models": {"face": {"version": "1", "url": files.url("/x.zip"), "sha256": "0" * 64}}})
    reported = twin.wait_reported(lambda r: r["model"]["state"] == "failed", timeout=60)
    assert reported["model"]["last_error"]["reason"] == "malformed_desired"
    assert "both model (the default) and a key of models" in reported["model"]["last_error"]["message"]
    assert read_manifest(service.store) == before and files.requests == []


def test_the_reference_design_keys_replace_the_default_beside_models(device):
    service, twin, files = device
    ssd = ssd_tflite_bundle()
    files.put("/ssd-oidv4_5.0.zip", ssd.data)
    face = _entry(files, "/face.zip", face_bundle(), "1")
    twin.set_desired({"FileName": "ssd-oidv4_5.0.zip", "DownloadUrl": files.url("/ssd-oidv4_5.0.zip"),
                      "ContentMD5": ssd.md5_base64, "models": {"face": face}})
    reported = twin.wait_reported(lambda r: is_active("5.0")(r) and _model(r, "face").get("state") == "active",
                                  timeout=120)
    assert reported["LatestAIModelFileName"] == "ssd-oidv4_5.0.zip"
    manifest = read_manifest(service.store)
    assert manifest.default == "ssd-oidv4" and set(manifest.models) == {"ssd-oidv4", "face"}
    assert reported["models"]["ssd-oidv4"]["active"]["version"] == "5.0"
    assert reported["models"].get("ssd-mobilenetv2-oidv4") is None  # the replaced default's entry is gone
    cat = requests.post(service.url + "/detect", data=(IMAGES / "chelsea.png").read_bytes(), timeout=30).json()
    assert cat["model"]["name"] == "ssd-oidv4" and cat["detections"][0]["label"] == "Cat"
