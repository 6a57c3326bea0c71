"""Model variants rolled out by twin to the real supervisor (two gunicorn workers), from a
real HTTP file server: the device downloads only the variant its CPU should run, verifies it
on this CPU against the bundle's verification set, passes a broken one over for the next,
and keeps serving meanwhile; deltas between versions of one variant keep working."""
from __future__ import annotations

import re
import threading

import pytest
import requests

from service.update.delta import build_patch
from tests.support.finetune import perturb
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active, model_status
from tests.support.paths import DEFAULT_MODEL, IMAGES
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.variants import PHOTOS, fp32_bundle, int8_bundle, tflite_bundles
from twinfer.engines import EngineOptions
from twinfer.loader import load_model
from twinfer.manifest import read_manifest

pytestmark = pytest.mark.processes  # every test here starts processes


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Built once: quantisation takes a few seconds a bundle."""
    work = tmp_path_factory.mktemp("variants")
    finetuned = work / "finetuned.onnx"
    perturb(DEFAULT_MODEL / "model.onnx", finetuned, head_only=True)
    fp16_tflite, int8_tflite = tflite_bundles(work / "tflite")
    return {
        "fp16-tflite": fp16_tflite, "int8-tflite": int8_tflite,
        "fp32": fp32_bundle(work / "fp32"),
        "int8": int8_bundle(work / "int8"),
        "broken": int8_bundle(work / "broken", broken=True),
        "int8-finetuned": int8_bundle(work / "int8-finetuned", finetuned),
    }


def _entry(files: FileServer, path: str, bundle, version: str, **extra) -> dict:
    files.put(path, bundle.data)
    return {"url": files.url(path), "sha256": bundle.sha256, "size": len(bundle.data), "version": version, **extra}


def _desired(version: str, variants: dict, **extra) -> dict:
    return {"model": {"name": "ssd", "version": version, "variants": variants, **extra}}


def _detect(service: ServiceProcess, picture: str) -> dict:
    answer = requests.post(service.url + "/detect", data=(IMAGES / picture).read_bytes(), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _metric(service: ServiceProcess, pattern: str) -> list[str]:
    text = requests.get(service.url + "/metrics", timeout=10).text
    return [line for line in text.splitlines() if re.match(pattern, line)]


class Traffic:
    """Requests on /detect all along, from another thread: every answer must be a 200."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service, self.failures, self.versions = service, [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        data = (IMAGES / "chelsea.png").read_bytes()
        while not self._stop.is_set():
            try:
                answer = requests.post(self.service.url + "/detect", data=data, timeout=30)
                if answer.status_code != 200:
                    self.failures.append(answer.status_code)
                else:
                    self.versions.add(answer.json()["model"]["version"])
            except requests.RequestException as exc:
                self.failures.append(str(exc))

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_variant_that_fails_its_verification_here_makes_way_for_the_next_and_int8_serves_like_fp32(
        tmp_path, bundles):
    env = {**QUICK_REPORTS, "TWINFER_VARIANT_INT8": "always"}
    with FileServer() as files, ServiceProcess.start(tmp_path / "store", workers=2, extra_env=env) as service:
        twin = LocalTwinFiles(service.store)
        twin.wait_reported(is_active("1.0.0"))
        # 2.0.0: a broken int8 first. The device downloads it, finds on its own CPU that it
        # disagrees with its reference, reports why, and takes fp32; 1.0.0 serves throughout.
        with Traffic(service) as traffic:
            twin.set_desired(_desired("2.0.0", {
                "int8": _entry(files, "/2.0.0/int8.zip", bundles["broken"], "2.0.0"),
                "fp32": _entry(files, "/2.0.0/fp32.zip", bundles["fp32"], "2.0.0"),
            }))
            reported = twin.wait_reported(is_active("2.0.0"), timeout=180)
        assert traffic.failures == [] and traffic.versions <= {"1.0.0", "2.0.0"}
        status = model_status(reported)
        assert status["active"]["variant"] == "fp32" and status.get("last_error") is None
        variant = status["variant"]
        assert variant["name"] == "fp32" and variant["cpu"].startswith("TWINFER_VARIANT_INT8=always")
        (rejected,) = variant["rejected"]
        assert rejected["variant"] == "int8" and rejected["reason"] == "variant_rejected"
        assert rejected["figures"]["f1"] < 0.95 and rejected["figures"]["reference_detections"] >= 3
        assert "below the bundle's gate of 0.950" in rejected["message"]
        assert read_manifest(service.store).default_entry.variant == "fp32"
        assert _metric(service, r'twinfer_model_variants_rejected_total\{.*variant="int8".*\} 1\.0')
        assert len(_metric(service, r'twinfer_worker_model_info\{.*variant="fp32".*version="2.0.0".*\} 1\.0|'
                                    r'twinfer_worker_model_info\{.*version="2.0.0".*variant="fp32".*\} 1\.0')) == 2

        # 2.1.0: a good int8. Only int8 is downloaded, it passes here, and answers as fp32 does.
        fp32_path = "/2.1.0/fp32.zip"
        twin.set_desired(_desired("2.1.0", {
            "int8": _entry(files, "/2.1.0/int8.zip", bundles["int8"], "2.1.0"),
            "fp32": _entry(files, fp32_path, bundles["fp32"], "2.1.0"),
        }))
        status = model_status(twin.wait_reported(is_active("2.1.0"), timeout=180))
        assert status["active"]["variant"] == "int8" and files.requests_for(fp32_path) == []
        assert status["variant"]["verification"]["f1"] >= 0.95 and status["variant"].get("rejected") is None
        fp32 = load_model(DEFAULT_MODEL, "fp32", "1", EngineOptions(use_host_artifacts=False))
        for picture in PHOTOS:
            served = _detect(service, picture)["detections"]
            expected = fp32.detect((IMAGES / picture).read_bytes(), 50_000_000).detections
            assert [d["class_id"] for d in served][:1] == expected.class_ids.tolist()[:1], picture
            for d, score in zip(served, expected.scores.tolist()):
                assert abs(d["score"] - score) < 0.05, picture
        models = requests.get(service.url + "/models", timeout=10).json()
        assert models["active"]["variant"] == "int8" and models["active"]["version"] == "2.1.0"

        # 2.2.0: the int8 variant after a head fine-tune, as a delta from 2.1.0's int8 bundle.
        patch = tmp_path / "int8-2.1.0-2.2.0.zst"
        base, new = tmp_path / "base.zip", tmp_path / "new.zip"
        base.write_bytes(bundles["int8"].data)
        new.write_bytes(bundles["int8-finetuned"].data)
        info = build_patch(base, new, patch)
        delta = {"base_version": "2.1.0", "base_sha256": bundles["int8"].sha256, "url": files.url("/2.2.0/int8.zst"),
                 "sha256": _entry(files, "/2.2.0/int8.zst", type(bundles["int8"])(patch.read_bytes()), "2.2.0")["sha256"],
                 "size": info.patch_size}
        twin.set_desired(_desired("2.2.0", {
            "int8": _entry(files, "/2.2.0/int8.zip", bundles["int8-finetuned"], "2.2.0", delta=delta),
            "fp32": _entry(files, "/2.2.0/fp32.zip", bundles["fp32"], "2.2.0"),
        }))
        status = model_status(twin.wait_reported(is_active("2.2.0"), timeout=180))
        assert status["active"]["variant"] == "int8" and status["download"]["path"] == "delta"
        assert files.requests_for("/2.2.0/int8.zip") == [] and info.patch_size < len(bundles["int8"].data) / 4


def test_a_cpu_the_first_variant_does_not_suit_falls_through_and_a_pin_overrides_it(tmp_path, bundles):
    env = {**QUICK_REPORTS, "TWINFER_VARIANT_INT8": "never"}
    with FileServer() as files, ServiceProcess.start(tmp_path / "store", workers=1, extra_env=env) as service:
        twin = LocalTwinFiles(service.store)
        twin.wait_reported(is_active("1.0.0"))
        twin.set_desired(_desired("2.0.0", {
            "int8": _entry(files, "/2.0.0/int8.zip", bundles["int8"], "2.0.0"),
            "fp32": _entry(files, "/2.0.0/fp32.zip", bundles["fp32"], "2.0.0"),
        }))
        status = model_status(twin.wait_reported(is_active("2.0.0"), timeout=180))
        assert status["active"]["variant"] == "fp32" and files.requests_for("/2.0.0/int8.zip") == []
        (skipped,) = status["variant"]["skipped"]
        assert skipped["variant"] == "int8" and "TWINFER_VARIANT_INT8=never" in skipped["why"]
        assert status["variant"].get("verification") is None  # fp32 carries no verification set
        twin.set_desired(_desired("2.1.0", {
            "int8": _entry(files, "/2.1.0/int8.zip", bundles["int8"], "2.1.0"),
            "fp32": _entry(files, "/2.1.0/fp32.zip", bundles["fp32"], "2.1.0"),
        }, variant="int8"))
        status = model_status(twin.wait_reported(is_active("2.1.0"), timeout=180))
        assert status["active"]["variant"] == "int8" and files.requests_for("/2.1.0/fp32.zip") == []
        assert _detect(service, "chelsea.png")["detections"][0]["label"] == "Cat"
        # The serving version pinned to the other variant: never replaced in place.
        twin.set_desired(_desired("2.1.0", {
            "int8": _entry(files, "/2.1.0/int8.zip", bundles["int8"], "2.1.0"),
            "fp32": _entry(files, "/2.1.0/fp32.zip", bundles["fp32"], "2.1.0"),
        }, variant="fp32"))
        status = model_status(twin.wait_reported(lambda r: model_status(r)["state"] == "failed", timeout=60))
        assert status["last_error"]["reason"] == "variant_mismatch" and status["active"]["variant"] == "int8"
        assert files.requests_for("/2.1.0/fp32.zip") == []
        # 2.2.0 as LiteRT models: a full-integer .tflite (uint8 in, int8 out), verified here too.
        twin.set_desired(_desired("2.2.0", {
            "int8": _entry(files, "/2.2.0/int8.zip", bundles["int8-tflite"], "2.2.0"),
            "fp16": _entry(files, "/2.2.0/fp16.zip", bundles["fp16-tflite"], "2.2.0"),
        }, variant="int8"))
        status = model_status(twin.wait_reported(is_active("2.2.0"), timeout=180))
        assert (status["active"]["format"], status["active"]["variant"]) == ("tflite", "int8")
        assert status["variant"]["verification"]["f1"] >= 0.95
        for picture, label in (("chelsea.png", "Cat"), ("astronaut.png", "Person"), ("coffee.png", "Coffee cup")):
            assert _detect(service, picture)["detections"][0]["label"] == label
