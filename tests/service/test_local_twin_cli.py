"""The embedded default's local twin takes everything a module twin takes, from the operator CLI.

Run as an operator runs it on a device with no IoT Hub: ``twin-patch --apply-local``,
``apply-patch`` with saved ``twin-patch`` output, ``delta --apply-local`` with a compressed
full bundle, ``set-model`` for a rollback to a version in the store by name and
version alone, and ``set-model --pool`` / ``--remove`` for a model served beside the
default one, against a real running service that acts on each document (and ``status``
showing what it did).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active, model_status
from tests.support.paths import MODELS, PROJECT_ROOT
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.processes  # every test here starts processes

FACE = MODELS / "blazeface_short_range.tflite"
ENV = {**QUICK_REPORTS, "TWINFER_DOWNLOAD_BACKOFF_INITIAL": "0.05"}


def cli(*args: str, store: Path | None = None, cwd: Path = PROJECT_ROOT,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "TWINFER_STORE")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # how README runs the CLI from any directory
    if store is not None:
        env["TWINFER_STORE"] = str(store)
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def face_env(tmp_path) -> dict[str, str]:
    directory = tmp_path / "face-default"
    directory.mkdir()
    (directory / "blazeface.tflite").write_bytes(FACE.read_bytes())
    (directory / "labels.txt").write_text("face\n")
    return {**ENV, "TWINFER_DEFAULT_MODEL_DIR": str(directory), "TWINFER_DEFAULT_MODEL_NAME": "face",
            "TWINFER_DEFAULT_MODEL_VERSION": "1"}


def build(tmp_path: Path, version: str, name: str = "face") -> Path:
    """A face bundle whose metadata differs per version (so a delta has something to carry)."""
    metadata = tmp_path / f"twinfer-{name}-{version}.json"
    metadata.write_text(json.dumps({"decoder": "blazeface", "max_detections": 10 + int(version)}))
    labels = tmp_path / "labels.txt"
    labels.write_text("face\n")
    out = tmp_path / f"{name}_{version}.zip"
    done = cli("bundle", str(FACE), "--labels", str(labels), "--metadata", str(metadata), "--name", name,
               "--version", version, "-o", str(out), "--compressed")
    assert done.returncode == 0, done.stderr
    return out


def desired(store: Path) -> dict:
    return json.loads((store / "twin" / "desired.json").read_text())


def test_every_twin_patch_reaches_the_local_twin_and_a_refused_downgrade_writes_nothing(tmp_path, face_env):
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundles = {version: build(tmp_path, version) for version in ("2", "3", "4")}
    with FileServer({f"/{p.name}": p.read_bytes() for p in tmp_path.glob("face_*.zip*")}) as files, \
            ServiceProcess.start(store, workers=1, extra_env=face_env):
        def rollout(version: str, *extra: str) -> list[str]:
            return ["--url", files.url(f"/face_{version}.zip"), "--bundle", str(bundles[version]), "--name", "face",
                    "--version", version, *extra]

        # twin-patch --apply-local: the download settings reach the device's desired document.
        done = cli("twin-patch", *rollout("2", "--window", "00:00-23:59", "--max-bps", "1048576", "--urgent"),
                   "--apply-local", store=store)
        assert done.returncode == 0, done.stderr
        assert desired(store)["download"] == {"windows": ["00:00-23:59"], "max_bytes_per_second": 1048576}
        assert desired(store)["model"]["urgent"] is True
        twin.wait_reported(is_active("2"))

        # apply-patch: saved twin-patch output, from a file and from stdin.
        printed = cli("twin-patch", *rollout("3"), "--no-windows")
        assert printed.returncode == 0, printed.stderr
        (tmp_path / "patch-3.json").write_text(printed.stdout)
        done = cli("apply-patch", str(tmp_path / "patch-3.json"), store=store)
        assert done.returncode == 0 and "$version 2" in done.stdout, done.stderr
        assert desired(store)["download"]["windows"] == []
        twin.wait_reported(is_active("3"))

        # delta --apply-local with the full bundle served compressed: the delta is taken.
        done = cli("delta", "--base", str(bundles["3"]), "--base-version", "3", "--patch-url",
                   files.url("/face_3-4.zst"), "--patch-out", str(tmp_path / "face_3-4.zst"), "--compressed",
                   str(bundles["4"]) + ".zst", *rollout("4"), "--apply-local", store=store)
        assert done.returncode == 0, done.stderr
        files.put("/face_3-4.zst", (tmp_path / "face_3-4.zst").read_bytes())
        document = desired(store)["model"]
        assert document["compression"] == "zstd" and document["url"].endswith("/face_4.zip")
        document["url"] = files.url("/face_4.zip.zst")  # the frame, as the runbook uploads it
        done = cli("apply-patch", "-", store=store, stdin=json.dumps({"model": document}))
        assert done.returncode == 0, done.stderr
        download = model_status(twin.wait_reported(is_active("4")))["download"]
        assert download["path"] == "delta", download

        # set-model: a downgrade without permission is what the device refuses; nothing is written.
        before = desired(store)
        refused = cli("set-model", "--name", "face", "--version", "2", store=store)
        assert refused.returncode == 2 and "allow_downgrade" in refused.stderr, refused.stderr
        assert desired(store) == before

        # ... with permission, by name and version alone: the store holds 2 and its bundle's SHA-256.
        done = cli("set-model", "--name", "face", "--version", "2", "--allow-downgrade", store=store)
        assert done.returncode == 0, done.stderr
        assert "url" not in desired(store)["model"]
        status = model_status(twin.wait_reported(is_active("2")))
        assert status["target"] == {"name": "face", "version": "2"} and "last_error" not in status

        unknown = cli("set-model", "--name", "face", "--version", "9", store=store)
        assert unknown.returncode == 2 and "not in" in unknown.stderr


def test_a_pool_model_set_and_removed_from_the_cli_and_shown_by_status(tmp_path, face_env):
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    plates = build(tmp_path, "2", name="plates")

    def pool_entry(reported: dict) -> dict:
        return (reported.get("models") or {}).get("plates") or {}

    def status() -> dict:
        done = cli("status", "--json", store=store)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    with FileServer({"/plates_2.zip": plates.read_bytes()}) as files, \
            ServiceProcess.start(store, workers=1, extra_env=face_env):
        done = cli("set-model", "--pool", "--name", "plates", "--version", "2", "--url", files.url("/plates_2.zip"),
                   "--bundle", str(plates), "--threshold", "0.3", store=store)
        assert done.returncode == 0, done.stderr
        assert set(desired(store)) == {"models", "$version"}  # the default model's key untouched
        reported = twin.wait_reported(lambda r: pool_entry(r).get("state") == "active")
        assert pool_entry(reported)["active"]["version"] == "2"
        assert model_status(reported)["active"]["name"] == "face"  # still the default

        def serving_both() -> dict | None:
            seen = status()
            workers = seen["workers"]
            loaded = workers and {m["name"] for m in workers[0]["models"]} == {"face", "plates"}
            return seen if loaded else None

        seen = wait_until(serving_both, "status shows a worker serving both models", 60, interval=0.3)
        assert [(m["name"], m["version"], m["default"], m["present"]) for m in seen["models"]] == [
            ("face", "1", True, True), ("plates", "2", False, True)]
        assert seen["active"]["name"] == "face" and seen["models"][1]["score_threshold"] == 0.3
        assert seen["models"][1]["generation"] == seen["manifest_generation"]
        assert ("plates", "active") in {(m["name"], m["state"]) for m in seen["twin"]["models"]}
        text = cli("status", store=store).stdout
        assert "models (2 in the manifest" in text and "plates" in text

        done = cli("set-model", "--remove", "plates", store=store)
        assert done.returncode == 0, done.stderr
        assert "plates" not in desired(store).get("models", {})
        twin.wait_reported(lambda r: "plates" not in (r.get("models") or {}))

        def only_the_default() -> dict | None:
            seen = status()
            names = [m["name"] for m in seen["models"]]
            workers = seen["workers"]
            return seen if names == ["face"] and workers and [m["name"] for m in workers[0]["models"]] == [
                "face"] else None

        seen = wait_until(only_the_default, "status shows plates gone from the pool", 60, interval=0.3)
        assert [m["name"] for m in seen["twin"]["models"]] in (["face"], [])
        again = cli("set-model", "--remove", "plates", store=store)
        assert again.returncode == 2 and "not a model of the pool" in again.stderr


def test_commands_refuse_a_directory_that_no_service_uses(tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    for args in (["set-model", "--name", "face", "--version", "2", "--url", "https://files.local/f.zip",
                  "--sha256", "b" * 64],
                 ["set-model", "--name", "face", "--version", "2"]):
        done = cli(*args, cwd=work)
        assert done.returncode == 2 and "is not the store of a twinfer service" in done.stderr, done.stderr
    (work / "p.json").write_text('{"inference": {"score_threshold": 0.5}}')
    done = cli("apply-patch", "p.json", "--store", str(tmp_path / "typo"), cwd=work)
    assert done.returncode == 2 and "typo" in done.stderr
    assert list(work.iterdir()) == [work / "p.json"]  # no ./var, no twin written anywhere
    assert not (tmp_path / "typo").exists()
