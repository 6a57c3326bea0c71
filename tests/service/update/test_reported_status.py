"""The reported ``model`` status describes the latest desired document and the store as they are.

No field outlives the document it was about: a success clears the error of an earlier one,
a refused version is the ``target`` (not the version that keeps serving), a restart reports
the outcome of the last handled document as it was, and the staged-versions gauge is right
from the first scrape.
"""
from __future__ import annotations

import re
import shutil

import pytest
import requests

from tests.support.bundles import face_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, failed_with, is_active, model_status
from tests.support.paths import MODELS
from tests.support.service_process import QUICK_REPORTS, ServiceProcess

pytestmark = pytest.mark.processes  # every test here starts processes

ENV = {
    **QUICK_REPORTS,
    "TWINFER_DOWNLOAD_BACKOFF_INITIAL": "0.05",
    "TWINFER_DOWNLOAD_MAX_ATTEMPTS": "1",
}


@pytest.fixture
def face_env(tmp_path) -> dict[str, str]:
    directory = tmp_path / "face-default"
    directory.mkdir()
    shutil.copy(MODELS / "blazeface_short_range.tflite", directory / "blazeface.tflite")
    (directory / "labels.txt").write_text("face\n")
    return {**ENV, "TWINFER_DEFAULT_MODEL_DIR": str(directory), "TWINFER_DEFAULT_MODEL_NAME": "face",
            "TWINFER_DEFAULT_MODEL_VERSION": "1"}


def staged_gauge(service: ServiceProcess) -> float:
    text = requests.get(service.url + "/metrics", timeout=10).text
    return float(re.search(r"^twinfer_staged_model_versions (\S+)$", text, re.M).group(1))


def test_status_follows_the_latest_desired_document_across_successes_refusals_and_restarts(tmp_path, face_env):
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundles = {version: face_bundle() for version in ("2", "3")}
    with FileServer({f"/face-{v}.zip": b.data for v, b in bundles.items()}) as files:
        with ServiceProcess.start(store, workers=1, extra_env=face_env) as service:
            assert staged_gauge(service) == 1  # the bundled default, before any update

            missing = twin.set_desired(model_desired("face", "2", files.url("/gone.zip"), bundles["2"]))
            twin.wait_reported(failed_with("not_found", missing))

            twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), bundles["2"]))
            status = model_status(twin.wait_reported(is_active("2")))
            assert "last_error" not in status, status  # the not_found was about an earlier document
            assert status["target"] == {"name": "face", "version": "2"}

            twin.set_desired(model_desired("face", "3", files.url("/face-3.zip"), bundles["3"]))
            twin.wait_reported(is_active("3"))

            refused = twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), bundles["2"]))
            status = model_status(twin.wait_reported(failed_with("downgrade_refused", refused)))
            assert status["target"] == {"name": "face", "version": "2"}  # what was refused
            assert status["active"]["version"] == "3"  # what serves

        # Restarted on the same desired document: it is not handled again, and the report
        # says what it said, not "active" beside a target that was refused.
        (store / "twin" / "reported.json").unlink()
        with ServiceProcess.start(store, workers=1, extra_env=face_env) as service:
            status = model_status(twin.wait_reported(lambda r: model_status(r)["state"] == "failed"))
            assert status["target"] == {"name": "face", "version": "2"}
            assert (status["desired_version"], status["last_error"]["reason"]) == (refused, "downgrade_refused")
            assert status["active"]["version"] == "3"
            assert staged_gauge(service) == 3

            twin.set_desired(model_desired("face", "3", files.url("/face-3.zip"), bundles["3"]))
            status = model_status(twin.wait_reported(lambda r: model_status(r)["desired_version"] == twin.version
                                                     and model_status(r)["state"] == "active"))
            assert "last_error" not in status and status["target"] == {"name": "face", "version": "3"}


def test_a_newer_document_during_a_download_cancels_it_and_is_followed(tmp_path, face_env):
    """The twin delivers documents while an update runs; the newer one wins, and the twin
    keeps being followed (a crash in its callback would stop every later update)."""
    store = tmp_path / "store"
    twin = LocalTwinFiles(store)
    bundles = {version: face_bundle() for version in ("2", "3")}
    with FileServer({f"/face-{v}.zip": b.data for v, b in bundles.items()}) as files, \
            ServiceProcess.start(store, workers=1, extra_env={**face_env, "TWINFER_DOWNLOAD_RANGE_BYTES": "0"}):
        slow = model_desired("face", "2", files.url("/face-2.zip"), bundles["2"],
                             download={"max_bytes_per_second": 1024})  # ~4 minutes for this bundle
        twin.set_desired(slow)
        twin.wait_reported(lambda r: model_status(r)["state"] == "downloading")
        twin.set_desired(model_desired("face", "3", files.url("/face-3.zip"), bundles["3"]))
        status = model_status(twin.wait_reported(is_active("3")))
        assert status["target"] == {"name": "face", "version": "3"} and "last_error" not in status
        twin.set_desired(model_desired("face", "2", files.url("/face-2.zip"), bundles["2"]))
        twin.wait_reported(failed_with("downgrade_refused", twin.version))  # still followed
