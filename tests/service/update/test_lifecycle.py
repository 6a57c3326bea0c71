"""The model lifecycle end to end on the embedded default: local twin -> download from a
real HTTP server -> verify -> unpack -> validate -> promote -> publish -> report, with the
real supervisor and gunicorn. Every failure leaves the serving model untouched."""
from __future__ import annotations

import io
import re
import zipfile

import pytest
import requests

from tests.support.bundles import face_bundle, make_bundle, model_desired, ssd_tflite_bundle
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, failed_with, is_active, model_status
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from twinfer.manifest import read_default

pytestmark = pytest.mark.processes  # every test here starts processes

ENV = {**QUICK_REPORTS, "TWINFER_DOWNLOAD_READ_TIMEOUT": "5", "TWINFER_KEEP_VERSIONS": "3"}


@pytest.fixture(scope="module")
def files():
    with FileServer() as server:
        yield server


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    store = tmp_path_factory.mktemp("lifecycle") / "store"
    with ServiceProcess.start(store, workers=1, extra_env=ENV) as service:
        yield service


@pytest.fixture(scope="module")
def twin(device):
    twin = LocalTwinFiles(device.store)
    twin.wait_reported(is_active("1.0.0"))
    return twin


def _serve(files: FileServer, path: str, data: bytes) -> str:
    files.put(path, data)
    return files.url(path + "?sv=2024&sig=SECRETSIG")


def test_patch_downloads_verifies_stages_publishes_and_reports(device, twin, files):
    bundle = face_bundle()
    url = _serve(files, "/models/face_2.0.0.zip", bundle.data)
    version = twin.set_desired(model_desired("face", "2.0.0", url, bundle))
    reported = twin.wait_reported(is_active("2.0.0"))
    status = model_status(reported)
    assert status["active"]["decoder"] == "blazeface" and status["active"]["format"] == "tflite"
    assert reported["LatestAIModelFileName"] == "face_2.0.0.zip"
    manifest = read_default(device.store)
    assert (manifest.name, manifest.version, manifest.generation) == ("face", "2.0.0", 2)
    assert (device.store / "models/face/2.0.0/blazeface.tflite").is_file()
    assert list((device.store / "staging/downloads").iterdir()) == []
    assert len(files.requests_for("/models/face_2.0.0.zip")) == 1
    assert "SECRETSIG" not in str(reported) and "SECRETSIG" not in device.log()
    metrics = requests.get(device.url + "/metrics", timeout=5).text
    assert float(re.search(r"^twinfer_download_bytes_total (\S+)$", metrics, re.M).group(1)) >= len(bundle.data)
    assert re.search(r'^twinfer_model_updates_total\{result="published"\} 1\.0$', metrics, re.M)
    assert re.search(r"^twinfer_staged_model_versions 2\.0$", metrics, re.M)
    assert re.search(r"^twinfer_download_duration_seconds_count 1\.0$", metrics, re.M)
    # the same document again (a restart or reconnect re-delivers it): nothing happens twice
    twin.set_desired(model_desired("face", "2.0.0", url, bundle), version=version)
    assert len(files.requests_for("/models/face_2.0.0.zip")) == 1


def _assert_rejected(device, twin, document: dict, reason: str) -> dict:
    before = read_default(device.store)
    version = twin.set_desired(document)
    reported = twin.wait_reported(failed_with(reason, version))
    assert read_default(device.store) == before
    assert model_status(reported)["active"]["version"] == before.version
    detect = requests.post(device.url + "/detect", data=b"x", timeout=10)
    assert detect.status_code == 400  # still serving, still answering
    return reported


def test_checksum_mismatch_is_discarded_and_reported(device, twin, files):
    bundle = face_bundle()
    url = _serve(files, "/models/face_3.zip", bundle.data)
    document = model_desired("face", "3", url, bundle)
    document["model"]["sha256"] = "0" * 64
    reported = _assert_rejected(device, twin, document, "checksum_mismatch")
    assert "SHA-256 mismatch" in model_status(reported)["last_error"]["message"]
    assert not (device.store / "models/face/3").exists()
    assert list((device.store / "staging/downloads").iterdir()) == []


def _zip_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_zip_with("../../evil.txt", b"owned"), "bad_bundle_unsafe_path"),
        (make_bundle({"model.tflite": b"\0" * (60 * 1024 * 1024)}).data, "bad_bundle_bomb"),
        (make_bundle({"model.onnx": b"this is not an onnx file", "labels.txt": b"a\n"}).data, "invalid_model"),
        (b"not a zip at all", "bad_bundle_not_a_zip"),
    ],
    ids=["zip-slip", "zip-bomb", "model-fails-to-load", "not-a-zip"],
)
def test_bad_bundles_are_reported_and_nothing_is_published(device, twin, files, payload, reason):
    path = f"/models/bad-{reason}.zip"
    url = _serve(files, path, payload)
    from tests.support.bundles import Bundle

    _assert_rejected(device, twin, model_desired("bad", reason.replace("_", "-"), url, Bundle(payload)), reason)
    assert not (device.store / "models/bad").exists()
    assert not (device.store.parent / "evil.txt").exists()
    assert [p.name for p in (device.store / "staging").iterdir()] == ["downloads"]


def test_malformed_desired_document_changes_nothing(device, twin):
    reported = _assert_rejected(device, twin, {"model": {"name": "x", "version": "1", "url": "ftp://nope"}}, "malformed_desired")
    assert "model.url" in model_status(reported)["last_error"]["message"]


def test_forbidden_download_fails_fast(device, twin, files):
    bundle = face_bundle()
    path = "/models/forbidden_4.zip"
    url = _serve(files, path, bundle.data)
    files.faults(path).statuses = [403] * 5
    _assert_rejected(device, twin, model_desired("face", "4", url, bundle), "forbidden")
    assert len(files.requests_for(path)) == 1


def test_reference_design_keys_with_base64_md5(device, twin, files):
    bundle = ssd_tflite_bundle()
    url = _serve(files, "/models/ssd-oidv4_5.0.zip", bundle.data)
    twin.set_desired({"FileName": "ssd-oidv4_5.0.zip", "DownloadUrl": url, "ContentMD5": bundle.md5_base64})
    reported = twin.wait_reported(is_active("5.0"))
    assert reported["LatestAIModelFileName"] == "ssd-oidv4_5.0.zip"
    assert model_status(reported)["active"]["decoder"] == "ssd_anchors"
    assert read_default(device.store).name == "ssd-oidv4"


def test_staged_version_activates_without_download_and_threshold_rides_along(device, twin, files):
    bundle = face_bundle()
    url = _serve(files, "/models/face_2.0.0.zip", bundle.data)
    requests_before = len(files.requests)
    twin.set_desired(model_desired("face", "2.0.0", url, bundle, inference={"score_threshold": 0.7}))
    reported = twin.wait_reported(is_active("2.0.0"))
    assert len(files.requests) == requests_before
    assert model_status(reported)["active"]["score_threshold"] == 0.7
    assert read_default(device.store).score_threshold == 0.7


def test_old_versions_are_pruned_but_active_and_previous_kept(device):
    kept = sorted(p.parent.name + "/" + p.name for p in (device.store / "models").glob("*/*"))
    assert len(kept) <= 3
    assert "face/2.0.0" in kept and "ssd-oidv4/5.0" in kept
