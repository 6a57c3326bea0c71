"""Delta updates and download windows through the real supervisor (local twin, loopback blob server).

A device that holds the base bundle downloads only the patch; every reason a delta cannot
be used (no base, a patch that is not a patch, a patch that yields another bundle) falls
back to the full bundle, and the twin says which path was taken and why. Outside the
download windows an update waits as ``scheduled`` without touching the network, unless
the twin marks it urgent.
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from service.update.delta import build_patch
from tests.support.bundles import Bundle, make_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active, model_status
from tests.support.paths import MODELS
from tests.support.service_process import QUICK_REPORTS, ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes

ENV = {
    **QUICK_REPORTS,
    "TWINFER_DOWNLOAD_BACKOFF_INITIAL": "0.05",
    "TWINFER_UPDATE_RETRY_SECONDS": "1",
    "TZ": "UTC",
}
FACE = (MODELS / "blazeface_short_range.tflite").read_bytes()


def face(version: str, threshold: float) -> Bundle:
    """BlazeFace with its own metadata per version, stored uncompressed as the bundle command does."""
    metadata = json.dumps({"decoder": "blazeface", "score_threshold": threshold, "max_detections": 10 + int(version)})
    return make_bundle({"blazeface.tflite": FACE, "labels.txt": b"face\n", "twinfer.json": metadata.encode()},
                       compression=zipfile.ZIP_STORED)


def patch_bytes(tmp: Path, base: Bundle, new: Bundle) -> bytes:
    (tmp / "base").write_bytes(base.data)
    (tmp / "new").write_bytes(new.data)
    build_patch(tmp / "base", tmp / "new", tmp / "patch")
    return (tmp / "patch").read_bytes()


def delta_desired(version: str, files: FileServer, bundle: Bundle, base_version: str, base: Bundle,
                  patch: bytes) -> dict:
    path = f"/face-{version}.zst"
    files.put(path, patch)
    document = model_desired("face", version, files.url(f"/face-{version}.zip?sig=SECRET"), bundle)
    document["model"]["delta"] = {
        "base_version": base_version, "base_sha256": base.sha256, "url": files.url(path + "?sig=SECRET"),
        "sha256": hashlib.sha256(patch).hexdigest(), "size": len(patch),
    }
    return document


def requested(files: FileServer, path: str) -> int:
    return sum(1 for r in files.requests if r.path == path)


def saved_metric(service: ServiceProcess, reason: str) -> float:
    text = requests.get(service.url + "/metrics", timeout=10).text
    found = re.search(rf'^twinfer_download_bytes_saved_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def face_default(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "face-default"
    directory.mkdir()
    (directory / "blazeface.tflite").write_bytes(FACE)
    (directory / "labels.txt").write_text("face\n")
    return {**ENV, "TWINFER_DEFAULT_MODEL_DIR": str(directory), "TWINFER_DEFAULT_MODEL_NAME": "face-default",
            "TWINFER_DEFAULT_MODEL_VERSION": "1"}


def test_a_delta_is_applied_to_the_kept_base_and_every_unusable_delta_falls_back_to_the_full_bundle(
    tmp_path, face_default
):
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundles = {v: face(v, t) for v, t in (("2", 0.5), ("3", 0.55), ("4", 0.6), ("5", 0.65), ("6", 0.7))}
    with FileServer() as files, ServiceProcess.start(store, workers=1, extra_env=face_default) as service:
        for version, bundle in bundles.items():
            files.put(f"/face-{version}.zip", bundle.data)

        # 2 arrives in full; the device keeps the bundle's bytes as the base of the next delta.
        twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), bundles["2"]))
        twin.wait_reported(is_active("2"))
        assert (store / "models/face/2/.twinfer-bundle").read_bytes() == bundles["2"].data

        # 3 by delta: the full bundle is never requested.
        patch = patch_bytes(tmp_path, bundles["2"], bundles["3"])
        assert len(patch) < len(bundles["3"].data) / 20
        twin.set_desired(delta_desired("3", files, bundles["3"], "2", bundles["2"], patch))
        download = model_status(twin.wait_reported(is_active("3")))["download"]
        assert requested(files, "/face-3.zip") == 0 and requested(files, "/face-3.zst") == 1
        assert (download["path"], download["bytes"], download["transferred"], download.get("delta_fallback")) == (
            "delta", len(bundles["3"].data), len(patch), None
        )
        assert download["saved_bytes"] == len(bundles["3"].data) - len(patch)
        assert saved_metric(service, "delta") == len(bundles["3"].data) - len(patch)
        assert (store / "models/face/3/.twinfer-bundle").read_bytes() == bundles["3"].data

        # 4: the patch's base is a version this device never held.
        patch = patch_bytes(tmp_path, bundles["2"], bundles["4"])
        twin.set_desired(delta_desired("4", files, bundles["4"], "9", bundles["2"], patch))
        download = model_status(twin.wait_reported(is_active("4")))["download"]
        assert (download["path"], download["delta_fallback"]) == ("full", "base_missing")
        assert requested(files, "/face-4.zst") == 0 and requested(files, "/face-4.zip") >= 1

        # 5: the twin's hash matches the file, but the file is no patch.
        twin.set_desired(delta_desired("5", files, bundles["5"], "4", bundles["4"], b"not a zstd frame" * 64))
        download = model_status(twin.wait_reported(is_active("5")))["download"]
        assert (download["path"], download["delta_fallback"]) == ("full", "corrupt_patch")

        # 6: a valid patch from the right base that yields another bundle of the same size.
        impostor = face("6", 0.8)
        assert len(impostor.data) == len(bundles["6"].data) and impostor.sha256 != bundles["6"].sha256
        patch = patch_bytes(tmp_path, bundles["5"], impostor)
        twin.set_desired(delta_desired("6", files, bundles["6"], "5", bundles["5"], patch))
        download = model_status(twin.wait_reported(is_active("6")))["download"]
        assert (download["path"], download["delta_fallback"]) == ("full", "result_checksum")
        assert requested(files, "/face-6.zip") >= 1
        assert [p.name for p in (store / "staging/downloads").iterdir()] == []


def test_outside_the_download_window_an_update_waits_without_network_until_marked_urgent(tmp_path, face_default):
    now = datetime.now(timezone.utc)
    later = f"{(now + timedelta(hours=3)):%H:00}-{(now + timedelta(hours=4)):%H:00}"
    env = {**face_default, "TWINFER_DOWNLOAD_WINDOWS": later}
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundle = face("2", 0.5)
    with FileServer({"/face-2.zip": bundle.data}) as files, ServiceProcess.start(store, workers=1, extra_env=env):
        twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), bundle))
        status = model_status(twin.wait_reported(lambda r: model_status(r)["state"] == "scheduled"))
        opens = datetime.fromisoformat(status["scheduled_for"])
        assert timedelta(hours=2) < opens - now <= timedelta(hours=3, minutes=1)
        assert later in status["waiting_for"] and status["active"]["version"] == "1"
        assert files.requests == []

        # The twin's own windows replace the device's: one open now lets it through.
        open_now = f"{(now - timedelta(hours=1)):%H:00}-{(now + timedelta(hours=2)):%H:00}"
        twin.set_desired({**model_desired("face", "2", files.url("/face-2.zip"), bundle),
                          "download": {"windows": [open_now]}})
        status = model_status(twin.wait_reported(is_active("2")))
        assert "scheduled_for" not in status and "waiting_for" not in status  # null deletes a reported key

        bundle3 = face("3", 0.6)
        files.put("/face-3.zip", bundle3.data)
        urgent = model_desired("face", "3", files.url("/face-3.zip"), bundle3)
        twin.set_desired(urgent)  # back to the device's windows: scheduled again
        twin.wait_reported(lambda r: model_status(r)["state"] == "scheduled" and model_status(r)["target"]["version"] == "3")
        urgent["model"]["urgent"] = True
        twin.set_desired(urgent)
        twin.wait_reported(is_active("3"))


def test_a_window_closing_mid_download_pauses_it_and_urgent_resumes_from_the_kept_bytes(tmp_path, face_default):
    # The device's clock runs `shift` seconds ahead of UTC (a POSIX TZ with seconds), so that
    # the window, which ends on a whole minute, closes about 20 s into this test.
    closes_utc = datetime.now(timezone.utc) + timedelta(seconds=20)
    shift = (60 - closes_utc.second) % 60
    close_local = closes_utc + timedelta(seconds=shift)
    window = f"{close_local - timedelta(minutes=30):%H:%M}-{close_local:%H:%M}"
    env = {**face_default, "TZ": f"TST-00:00:{shift:02d}", "TWINFER_DOWNLOAD_WINDOWS": window,
           "TWINFER_DOWNLOAD_RANGE_BYTES": "65536"}
    store = tmp_path / "store"
    part = store / "staging/downloads/face/2.part"
    twin = LocalTwinFiles(store)
    bundle = face("2", 0.5)
    with FileServer({"/face-2.zip": bundle.data}) as files, ServiceProcess.start(store, workers=1, extra_env=env):
        files.faults("/face-2.zip").throttle_bps = 6 * 1024  # ~38 s for the bundle: the window closes first
        document = model_desired("face", "2", files.url("/face-2.zip"), bundle)
        twin.set_desired(document)
        twin.wait_reported(lambda r: model_status(r)["state"] == "downloading")
        status = model_status(twin.wait_reported(lambda r: model_status(r)["state"] == "scheduled", timeout=40))
        opens = datetime.fromisoformat(status["scheduled_for"])
        assert timedelta(hours=23) < opens - datetime.now(timezone.utc) < timedelta(hours=24)  # tomorrow's window
        kept = part.stat().st_size
        assert 0 < kept < len(bundle.data) and Path(str(part) + ".json").exists()
        asked = len(files.requests)

        files.faults("/face-2.zip").throttle_bps = None
        document["model"]["urgent"] = True
        twin.set_desired(document)
        status = model_status(twin.wait_reported(is_active("2")))
        assert status["download"]["resumed_from"] == kept
        assert files.requests[asked].headers["Range"].startswith(f"bytes={kept}-")


def test_a_bundle_served_zstd_compressed_is_unpacked_checked_and_kept_uncompressed(tmp_path, face_default):
    from service.update.delta import compress_bundle

    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundle = face("2", 0.5)
    (tmp_path / "face-2.zip").write_bytes(bundle.data)
    compress_bundle(tmp_path / "face-2.zip", tmp_path / "face-2.zip.zst", level=12)
    frame = (tmp_path / "face-2.zip.zst").read_bytes()
    damaged = bytearray(frame)
    damaged[len(damaged) // 2] ^= 0xFF
    with FileServer({"/face-2.zip.zst": frame, "/bad.zip.zst": bytes(damaged)}) as files, \
            ServiceProcess.start(store, workers=1, extra_env=face_default) as service:
        bad = model_desired("face", "2", files.url("/bad.zip.zst"), bundle)
        bad["model"].update(compression="zstd", size=len(damaged))
        version = twin.set_desired(bad)
        error = model_status(twin.wait_reported(lambda r: model_status(r)["desired_version"] == version
                                                and model_status(r)["state"] == "failed"))["last_error"]
        assert error["reason"] == "checksum_mismatch" and "does not decompress" in error["message"]

        good = model_desired("face", "2", files.url("/face-2.zip.zst"), bundle)
        good["model"].update(compression="zstd", size=len(frame))
        twin.set_desired(good)
        download = model_status(twin.wait_reported(is_active("2")))["download"]
        assert (download["path"], download["bytes"], download["transferred"]) == ("full", len(bundle.data), len(frame))
        assert (store / "models/face/2/.twinfer-bundle").read_bytes() == bundle.data  # the base of the next delta
        assert saved_metric(service, "compression") == len(bundle.data) - len(frame)
        assert list((store / "staging/downloads").iterdir()) == []


def test_a_delta_is_used_when_the_full_bundle_is_served_compressed(tmp_path, face_default):
    """The runbook's combined rollout: ``model.size`` is the zstd frame's, and the patch's
    result is the bundle, which is larger; the delta path must still be taken."""
    from service.update.delta import compress_bundle

    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    base, bundle = face("2", 0.5), face("3", 0.55)
    (tmp_path / "face-3.zip").write_bytes(bundle.data)
    compress_bundle(tmp_path / "face-3.zip", tmp_path / "face-3.zip.zst", level=12)
    frame = (tmp_path / "face-3.zip.zst").read_bytes()
    assert len(frame) < len(bundle.data)
    with FileServer({"/face-2.zip": base.data, "/face-3.zip.zst": frame}) as files, \
            ServiceProcess.start(store, workers=1, extra_env=face_default):
        twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), base))
        twin.wait_reported(is_active("2"))

        patch = patch_bytes(tmp_path, base, bundle)
        document = delta_desired("3", files, bundle, "2", base, patch)
        document["model"].update(url=files.url("/face-3.zip.zst"), compression="zstd", size=len(frame))
        twin.set_desired(document)
        download = model_status(twin.wait_reported(is_active("3")))["download"]
        assert (download["path"], download.get("delta_fallback"), download["bytes"]) == ("delta", None, len(bundle.data))
        assert requested(files, "/face-3.zip.zst") == 0 and requested(files, "/face-3.zst") == 1
        assert (store / "models/face/3/.twinfer-bundle").read_bytes() == bundle.data
