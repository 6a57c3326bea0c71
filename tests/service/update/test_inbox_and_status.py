"""The update pipeline's inbox (desired documents, handled once, cancelled, retried) and
its one status writer (what every reported ``model`` carries)."""
from __future__ import annotations

import ast
import json
import threading

from service.update.desired import parse_desired
from service.update.inbox import DesiredInbox, HandledRecord, fingerprint
from service.update.status import ModelStatus
from tests.support.paths import PROJECT_ROOT

SHA = "a" * 64


def desired(version: str, **extra) -> dict:
    return {"model": {"name": "face", "version": version, "url": f"http://127.0.0.1:1/face-{version}.zip",
                      "sha256": SHA}, **extra}


class Recorder:
    """Stands where ``service.report.Reporter`` stands: the patches the twin would get."""

    def __init__(self) -> None:
        self.patches: list[dict] = []

    def update(self, patch: dict) -> None:
        self.patches.append(patch)


def test_a_document_is_fingerprinted_by_content_not_by_twin_version():
    assert fingerprint({"$version": 7, **desired("1")}) == fingerprint({"$version": 8, **desired("1")})
    assert fingerprint(desired("1")) == fingerprint({"$metadata": {"x": 1}, **desired("1")})
    assert fingerprint(desired("1")) != fingerprint(desired("2"))


def test_patches_merge_and_a_document_for_another_model_cancels_the_work():
    inbox = DesiredInbox()
    inbox.put({"$version": 1, **desired("1")}, full=True)
    taken = inbox.take()
    assert taken["model"]["version"] == "1" and taken["$version"] == 1
    inbox.working_on(parse_desired(taken).model)
    inbox.put({"$version": 2, "inference": {"score_threshold": 0.4}}, full=False)  # same model: no cancel
    assert not inbox.cancel.is_set()
    inbox.put({"$version": 3, "model": {"version": "2", "url": "http://127.0.0.1:1/face-2.zip"}}, full=False)
    assert inbox.cancel.is_set()
    merged = inbox.take()
    assert merged["$version"] == 3 and merged["model"]["version"] == "2" and merged["model"]["sha256"] == SHA
    assert merged["inference"] == {"score_threshold": 0.4} and not inbox.cancel.is_set()


def test_a_retry_hands_the_same_document_out_again_and_close_ends_the_wait():
    inbox = DesiredInbox()
    inbox.put(desired("1"), full=True)
    first = inbox.take()
    inbox.retry_in(0.0)
    assert inbox.take() == first
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(inbox.take()))
    waiter.start()
    inbox.close()
    waiter.join(5)
    assert result == [None] and inbox.cancel.is_set()


def test_the_handled_record_survives_a_restart(tmp_path):
    path = tmp_path / "updater.json"
    HandledRecord(path).save("v9", {"state": "failed", "desired_version": 9})
    again = HandledRecord(path)
    assert again.fingerprint == "v9" and again.outcome == {"state": "failed", "desired_version": 9}
    path.write_text("{not json")
    assert (HandledRecord(path).fingerprint, HandledRecord(path).outcome) == (None, {})


def test_every_model_report_names_state_document_target_and_error_together():
    recorder = Recorder()
    status = ModelStatus(recorder, {"desired_version": 4, "target": {"name": "face", "version": "1"}})
    target = parse_desired(desired("2")).model
    status.new_document(5, fresh=True)
    status.step(target, "downloading", progress=None)
    status.failure("checksum_mismatch", "the bytes are not the twin's sha256")
    status.new_document(5, fresh=False)  # the same document again: its error stays
    status.write("retrying")
    status.rollout(3, 1, 2)
    downloading, failed, retrying, rollout = (p["model"] for p in recorder.patches[:4])
    assert downloading["state"] == "downloading" and downloading["desired_version"] == 5
    assert downloading["target"] == {"name": "face", "version": "2"} and downloading["last_error"] is None
    assert downloading["scheduled_for"] is None and downloading["waiting_for"] is None  # a past wait cleared
    assert failed["last_error"]["reason"] == "checksum_mismatch" and failed["last_error"]["at"].endswith("+00:00")
    assert retrying["last_error"] == failed["last_error"]
    assert rollout == {"rollout": {"generation": 3, "workers_on_new": 1, "workers": 2, "complete": False}}
    status.note_variant(cpu="x86_64 CPU with AVX-512 VNNI", skipped=[])
    status.note_variant(name="int8", verification={"f1": 1.0})
    status.write("active")
    assert recorder.patches[-1]["model"]["variant"] == {"cpu": "x86_64 CPU with AVX-512 VNNI", "skipped": [],
                                                        "name": "int8", "verification": {"f1": 1.0},
                                                        "int8": None, "rejected": None}  # written whole
    status.new_document(6, fresh=True)  # a new document: the old error and variant say nothing of it
    assert status.outcome("active") == {"state": "active", "desired_version": 6,
                                        "target": {"name": "face", "version": "2"}, "last_error": None,
                                        "variant": None}
    assert json.dumps(recorder.patches)  # every report is plain JSON for the twin


def test_only_the_status_writer_reaches_the_reporter():
    """One writer of the reported model: no other module of the pipeline imports the reporter."""
    importers = []
    for path in sorted((PROJECT_ROOT / "service" / "update").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if "service.report" in modules:
            importers.append(path.name)
    assert importers == ["status.py"]
