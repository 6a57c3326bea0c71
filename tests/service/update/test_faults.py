"""Reliability: each fault a device meets in the field, injected for real; nothing is lost
and serving continues.

* kill -9 of the whole module (supervisor and gunicorn) in the middle of a download: the
  restart resumes the ``.part`` file with a Range request, and the manifest names the old
  model until the new one was validated;
* a crash between the manifest's temp write and its rename (and SIGKILLs during a loop of
  publishes): the manifest stays readable and names a complete model; temp files are
  cleaned up by the next publish and at start;
* disk full while downloading and while unpacking (a real tmpfs as the store): a clean,
  reported failure, staging emptied, the old model still serving;
* a blob that answers 500s, resets the connection mid-body or stalls past the read
  timeout: retried and resumed through the real supervisor until the model is active;
* a damaged model store (the active version's model file deleted or changed while the
  service was down): found at start-up, logged and counted, the newest complete version
  published instead.

The hub being unreachable (MQTT broker down, then restarted) is covered over real
transports by ``tests/service/test_lifecycle_azure.py::test_desired_change_while_broker_is_down_is_applied_once_after_reconnect``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from service.bootstrap import ensure_active_model, stage_directory, version_problem
from service.repository import ModelRepository
from service.update.bundle import BundleError, unpack_bundle
from service.update.validation import recorded_verdict
from tests.support.bundles import Bundle, face_bundle, make_bundle, model_desired, ssd_tflite_bundle
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, failed_with, is_active, model_status
from tests.support.paths import IMAGES, MODELS, PROJECT_ROOT
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.waiting import wait_until
from twinfer.manifest import MANIFEST_FILE, publish, read_default

pytestmark = pytest.mark.processes  # every test here starts processes

MiB = 1024 * 1024
ENV = {
    **QUICK_REPORTS,
    "TWINFER_DOWNLOAD_READ_TIMEOUT": "1",
    "TWINFER_DOWNLOAD_CONNECT_TIMEOUT": "2",
    "TWINFER_DOWNLOAD_BACKOFF_INITIAL": "0.05",
    "TWINFER_UPDATE_RETRY_SECONDS": "1",
}
PICTURE = (IMAGES / "chelsea.png").read_bytes()


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_default(tmp_path_factory) -> Path:
    """A small bundled default (BlazeFace, 230 kB) for stores that must stay small."""
    directory = tmp_path_factory.mktemp("face-default")
    shutil.copy(MODELS / "blazeface_short_range.tflite", directory / "blazeface.tflite")
    (directory / "labels.txt").write_text("face\n")
    return directory


def face_env(face_default: Path, **extra: str) -> dict[str, str]:
    return {
        **ENV,
        "TWINFER_DEFAULT_MODEL_DIR": str(face_default),
        "TWINFER_DEFAULT_MODEL_NAME": "face-default",
        "TWINFER_DEFAULT_MODEL_VERSION": "1",
        **extra,
    }


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def kill_9_tree(pid: int) -> list[int]:
    """Power-cut a process tree: freeze every process (nothing reacts, nothing new is
    spawned), then SIGKILL them all, and wait until none runs any more."""
    victims = process_tree(pid)
    for victim in victims:
        os.kill(victim, signal.SIGSTOP)
    victims = process_tree(pid)  # anything forked just before the freeze
    for victim in victims:
        try:
            os.kill(victim, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: all(_gone(v) for v in victims), f"every process of {victims} gone after SIGKILL", 20,
               interval=0.02)
    return victims


class ManifestWatcher:
    """Reads the manifest every few ms in a thread; records every distinct document and
    whether its model directory was complete (validated) when it was first seen."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.seen: list[tuple[str, str, int, bool]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                manifest = read_default(self.store)
            except Exception as exc:  # a torn or half-written manifest
                self.errors.append(repr(exc))
                manifest = None
            if manifest is not None and (not self.seen or self.seen[-1][2] != manifest.generation):
                complete = recorded_verdict(manifest.model_dir(self.store)) is not None
                self.seen.append((manifest.name, manifest.version, manifest.generation, complete))
            self._stop.wait(0.005)

    def __enter__(self) -> "ManifestWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def detect_ok(service: ServiceProcess) -> requests.Response:
    answer = requests.post(service.url + "/detect", data=PICTURE, headers={"Content-Type": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "detections" in answer.json()
    return answer


def metric(service: ServiceProcess, pattern: str) -> float | None:
    text = requests.get(service.url + "/metrics", timeout=10).text
    found = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def staging_is_clean(store: Path) -> None:
    assert [p.name for p in (store / "staging").iterdir()] == ["downloads"], list((store / "staging").iterdir())
    assert list((store / "staging" / "downloads").iterdir()) == []


# --- kill -9 in the middle of a download -------------------------------------------------------


def test_kill_9_mid_download_resumes_from_the_part_file_and_publishes_only_after_validation(tmp_path):
    store = tmp_path / "store"
    bundle = ssd_tflite_bundle()
    size = len(bundle.data)
    path = "/models/ssd-tflite-2.0.0.zip"
    part = store / "staging" / "downloads" / "ssd-tflite" / "2.0.0.part"
    with FileServer({path: bundle.data}) as files, ManifestWatcher(store) as watcher:
        files.faults(path).throttle_bps = size // 4  # about 4 s for the whole bundle
        url = files.url(path + "?sv=2024&sig=SECRET")
        twin = LocalTwinFiles(store)
        with ServiceProcess.start(store, workers=1, extra_env=ENV) as first:
            twin.wait_reported(is_active("1.0.0"))
            twin.set_desired(model_desired("ssd-tflite", "2.0.0", url, bundle))
            wait_until(lambda: part.exists() and part.stat().st_size > 0.3 * size, "the download passed 30%", 30,
                       interval=0.01)
            victims = kill_9_tree(first.proc.pid)
            assert len(victims) >= 3, victims  # supervisor, gunicorn master, worker
            first.proc.wait(10)
        kept = part.stat().st_size
        assert 0.3 * size < kept < size
        assert Path(str(part) + ".json").exists()  # the sidecar: which blob, which ETag
        assert read_default(store).version == "1.0.0"
        first_requests = len(files.requests_for(path))
        files.faults(path).throttle_bps = None
        # The killed worker left its state file. A restarted container reuses low pids: make
        # the stale file name a live process that is no worker (this test's own pid).
        stale = sorted((store / "run" / "workers").glob("*.json"))
        assert stale, "the SIGKILLed worker's state file is gone?"
        state = json.loads(stale[0].read_text())
        stale[0].unlink()
        (stale[0].parent / f"{os.getpid()}.json").write_text(json.dumps({**state, "pid": os.getpid()}))

        with ServiceProcess.start(store, workers=1, extra_env=ENV) as second:
            reported = twin.wait_reported(is_active("2.0.0"), timeout=90)
            detect_ok(second)
        time.sleep(0.05)  # one more look by the watcher

    resumed = files.requests_for(path)[first_requests:]  # 1 MiB ranges (TWINFER_DOWNLOAD_RANGE_BYTES)
    assert resumed[0].headers.get("Range") == f"bytes={kept}-{kept + 1024 * 1024 - 1}"
    assert {(r.status, r.headers.get("If-Range")) for r in resumed} == {(206, files.etag(path))}
    assert sum(r.body_bytes for r in resumed) == size - kept
    sent = sum(r.body_bytes for r in files.requests_for(path))
    assert size <= sent <= size + 256 * 1024, (sent, size)
    assert model_status(reported)["download"]["resumed_from"] == kept
    # The manifest named the old model until the new one was validated and in place.
    assert not watcher.errors, watcher.errors[:3]
    versions = [(name, version) for name, version, _, _ in watcher.seen]
    assert versions[0] == ("ssd-mobilenetv2-oidv4", "1.0.0") and versions[-1] == ("ssd-tflite", "2.0.0"), versions
    assert versions.index(("ssd-tflite", "2.0.0")) == len(versions) - 1
    assert all(complete for *_, complete in watcher.seen), watcher.seen
    assert not part.exists() and recorded_verdict(store / "models/ssd-tflite/2.0.0") is not None


# --- a crash while the manifest is written -----------------------------------------------------

_CRASH_BETWEEN_WRITE_AND_RENAME = """
import os, sys
from pathlib import Path
from twinfer.manifest import publish
store, name, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
os.replace = lambda *args, **kwargs: os._exit(1)  # dies after the temp file is written and fsynced
publish(store, name, version, f"models/{name}/{version}", "tflite", "blazeface")
"""

_PUBLISH_FOREVER = """
import sys
from pathlib import Path
from twinfer.manifest import publish
store = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    version = "1" if i % 2 else "2"
    publish(store, "face", version, f"models/face/{version}", "tflite", "blazeface")
    i += 1
"""


def _python(code: str, *args: str, **popen: object) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, env=env, **popen)


def _temp_files(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith("." + MANIFEST_FILE) and p.name.endswith(".tmp"))


def test_crash_during_manifest_writes_leaves_a_readable_manifest_naming_a_complete_model(tmp_path, face_default):
    store = tmp_path / "store"
    repo = ModelRepository(store)
    repo.prepare()
    for version in ("1", "2"):
        stage_directory(repo, face_default, "face", version)
    before = read_default(store)

    # 1. Dies between writing the temp file and renaming it: the old manifest stays.
    crashed = _python(_CRASH_BETWEEN_WRITE_AND_RENAME, str(store), "face", "1")
    assert crashed.wait(60) == 1
    assert read_default(store) == before
    leftovers = _temp_files(store)
    assert len(leftovers) == 1, leftovers
    assert json.loads((store / leftovers[0]).read_text())["models"]["face"]["version"] == "1"  # complete, never renamed

    # 2. SIGKILL at random moments of a tight publish loop.
    rng = random.Random(1234)
    last_generation = before.generation
    for _ in range(25):
        loop = _python(_PUBLISH_FOREVER, str(store), stdout=subprocess.PIPE)
        assert loop.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.05))
        loop.kill()
        loop.wait(10)
        loop.stdout.close()
        manifest = read_default(store)
        assert manifest is not None and manifest.name == "face" and manifest.version in ("1", "2")
        assert manifest.generation >= last_generation
        assert version_problem(manifest.model_dir(store), manifest.name, manifest.version) is None
        last_generation = manifest.generation
    assert last_generation > before.generation + 25  # the loops did publish

    # 3. The next publish drops leftovers (under the lock nobody else is writing) ...
    (store / leftovers[0]).write_text("left by a crash")
    publish(store, "face", "2", "models/face/2", "tflite", "blazeface")
    assert _temp_files(store) == []
    # ... and so does the start-up, without publishing anything.
    (store / leftovers[0]).write_text("left by a crash")
    current = read_default(store)
    assert ensure_active_model(repo, face_default, "face-default", "1") == current
    assert _temp_files(store) == [] and read_default(store) == current


# --- disk full ---------------------------------------------------------------------------------


@contextmanager
def tmpfs(mountpoint: Path, size_mb: int) -> Iterator[Path]:
    mountpoint.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a {size_mb} MB tmpfs at {mountpoint} for the disk-full tests (they need root, as CI has): "
            f"exit {done.returncode}: {done.stderr.strip()}",
            pytrace=False,
        )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _padded_model_zip(uncompressed: int) -> Bundle:
    """A bundle whose model member deflates about 20:1 (under the unpacker's bomb ratio):
    small to download, large to unpack."""
    rng = random.Random(7)
    block = bytearray()
    for _ in range(64):
        block += rng.randbytes(1024) + bytes(19 * 1024)
    data = bytes(block) * (uncompressed // len(block) + 1)
    return make_bundle({"model.tflite": data[:uncompressed], "labels.txt": b"face\n"})


def test_disk_full_during_download_and_unpack_fails_cleanly_and_serving_continues(tmp_path, face_default):
    with FileServer() as files, tmpfs(tmp_path / "store", 100) as store:
        with ServiceProcess.start(store, workers=1, extra_env=face_env(face_default)) as service:
            twin = LocalTwinFiles(store)
            twin.wait_reported(is_active("1"))
            before = read_default(store)
            free = shutil.disk_usage(store).free
            assert 80 * MiB < free < 100 * MiB, free
            blob = random.Random(3).randbytes(free + 8 * MiB)
            files.put("/big.zip", blob)
            big = Bundle(blob)

            # a. The size is known up front: refused before a byte is requested.
            version = twin.set_desired(model_desired("big", "1", files.url("/big.zip"), big))
            reported = twin.wait_reported(failed_with("no_space", version))
            assert "free" in model_status(reported)["last_error"]["message"]
            assert files.requests_for("/big.zip") == []
            staging_is_clean(store)
            detect_ok(service)

            # b. No size anywhere (chunked, none in the twin): the disk fills up while writing.
            files.faults("/big.zip").chunked = True
            document = model_desired("big", "2", files.url("/big.zip"), big)
            del document["model"]["size"]
            document["download"] = {"range_bytes": 0}  # one request: a range answer would announce the size
            answers: list[int] = []
            stop = threading.Event()

            def keep_asking() -> None:
                while not stop.is_set():
                    answers.append(requests.post(service.url + "/detect", data=PICTURE,
                                                 headers={"Content-Type": "image/png"}, timeout=30).status_code)

            asker = threading.Thread(target=keep_asking, daemon=True)
            asker.start()
            try:
                version = twin.set_desired(document)
                reported = twin.wait_reported(failed_with("no_space", version), timeout=60)
            finally:
                stop.set()
                asker.join(30)
            assert "disk full" in model_status(reported)["last_error"]["message"]
            assert len(files.requests_for("/big.zip")) == 1 and files.bytes_sent > 60 * MiB
            assert answers and set(answers) == {200}, answers
            staging_is_clean(store)
            assert shutil.disk_usage(store).free > free - 2 * MiB  # the partial file is gone

            # c. The bundle fits compressed, its unpacked files do not.
            padded = _padded_model_zip(free + 20 * MiB)
            assert len(padded.data) < 12 * MiB
            files.put("/padded.zip", padded.data)
            version = twin.set_desired(model_desired("padded", "1", files.url("/padded.zip"), padded))
            reported = twin.wait_reported(failed_with("bad_bundle_no_space", version), timeout=60)
            assert "bytes free" in model_status(reported)["last_error"]["message"]
            staging_is_clean(store)

            assert read_default(store) == before
            assert sorted(p.relative_to(store / "models").as_posix() for p in (store / "models").glob("*/*")) == [
                "face-default/1"
            ]
            assert model_status(twin.reported())["active"]["version"] == "1"
            assert metric(service, r'twinfer_download_failures_total\{reason="no_space"\}') == 2.0
            assert metric(service, r'twinfer_download_failures_total\{reason="bad_bundle_no_space"\}') == 1.0
            assert detect_ok(service).headers["X-Model-Version"] == "1"

        # d. Declared sizes that fit but a disk that fills up anyway (another writer): the
        # unpacker's own ENOSPC path, with the free-space check fooled.
        dest = store / "unpack-here"
        dest.mkdir()
        bundle_file = tmp_path / "padded.zip"
        bundle_file.write_bytes(padded.data)
        real_usage = shutil.disk_usage
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=10**12))
            with pytest.raises(BundleError) as failed:
                unpack_bundle(bundle_file, dest)
        assert failed.value.reason == "no_space"
        assert list(dest.iterdir()) == []


# --- a flaky blob store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flaky(tmp_path_factory, face_default):
    store = tmp_path_factory.mktemp("flaky") / "store"
    with FileServer() as files, ServiceProcess.start(store, workers=1, extra_env=face_env(face_default)) as service:
        twin = LocalTwinFiles(store)
        twin.wait_reported(is_active("1"))
        yield service, twin, files


def _roll_out(flaky, version: str, set_faults) -> tuple[list, int]:
    service, twin, files = flaky
    bundle = face_bundle()
    path = f"/face-{version}.zip"
    files.put(path, bundle.data)
    set_faults(files.faults(path), len(bundle.data))
    twin.set_desired(model_desired("face", version, files.url(path + "?sig=SECRET"), bundle))
    twin.wait_reported(is_active(version), timeout=60)
    detect_ok(service)
    assert read_default(service.store).version == version
    staging_is_clean(service.store)
    return files.requests_for(path), len(bundle.data)


def test_blob_answering_500s_then_the_bundle_is_retried_until_active(flaky):
    def faults(f, size):
        f.statuses = [500, 500, (503, {"Retry-After": "0"})]

    requests_made, size = _roll_out(flaky, "2", faults)
    assert [r.status for r in requests_made] == [500, 500, 503, 206]  # 206: a 1 MiB range covers the bundle
    assert sum(r.body_bytes for r in requests_made) == size


def test_connection_reset_mid_body_resumes_with_a_range(flaky):
    def faults(f, size):
        f.drop_after = size // 2

    requests_made, size = _roll_out(flaky, "3", faults)
    assert [r.status for r in requests_made] == [206, 206]
    assert requests_made[1].headers["Range"] == f"bytes={size // 2}-{size - 1}"
    assert sum(r.body_bytes for r in requests_made) == size  # nothing sent twice


def test_stall_longer_than_the_read_timeout_resumes_with_a_range(flaky):
    def faults(f, size):
        f.stall_after, f.stall_seconds = size // 3, 4.0  # the read timeout is 1 s

    started = time.monotonic()
    requests_made, size = _roll_out(flaky, "4", faults)
    assert time.monotonic() - started < 4.0  # it did not wait for the stall to end
    assert [r.status for r in requests_made][-1] == 206 and len(requests_made) == 2
    assert requests_made[1].headers["Range"] == f"bytes={size // 3}-{size - 1}"


# --- a damaged model store ---------------------------------------------------------------------


def test_damaged_active_version_is_found_at_start_and_the_newest_complete_one_is_published(tmp_path, face_default):
    store = tmp_path / "store"
    env = face_env(face_default)
    twin = LocalTwinFiles(store)
    with FileServer() as files, ServiceProcess.start(store, workers=1, extra_env=env):
        twin.wait_reported(is_active("1"))
        for version in ("2", "3"):
            bundle = face_bundle()
            files.put(f"/face-{version}.zip", bundle.data)
            twin.set_desired(model_desired("face", version, files.url(f"/face-{version}.zip"), bundle))
            twin.wait_reported(is_active(version), timeout=60)
            time.sleep(0.05)  # distinct directory times: "newest" is well defined
    assert read_default(store).version == "3"

    # 1. The active version's model file is deleted while the service is down.
    (store / "models/face/3/blazeface.tflite").unlink()
    with ServiceProcess.start(store, workers=1, extra_env=env) as service:
        manifest = read_default(store)
        assert (manifest.name, manifest.version) == ("face", "2")
        assert detect_ok(service).headers["X-Model-Version"] == "2"
        assert "the active model face 3 (generation 3) is damaged" in service.log()
        assert metric(service, r'twinfer_download_failures_total\{reason="damaged_model"\}') == 1.0
        assert metric(service, r'twinfer_model_updates_total\{result="failed"\}') == 1.0
        error = model_status(twin.wait_reported(is_active("2")))["last_error"]
        assert error["reason"] == "damaged_model"
        assert "face 3 was damaged" in error["message"] and "serving face 2 instead" in error["message"]
    assert not (store / "models/face/3").exists()  # a fresh download of 3 can stage it again

    # 2. Its model file is changed (truncated) while the service is down: the verdict no longer matches.
    model = store / "models/face/2/blazeface.tflite"
    model.write_bytes(model.read_bytes()[:1000])
    with ServiceProcess.start(store, workers=1, extra_env=env) as service:
        manifest = read_default(store)
        assert (manifest.name, manifest.version) == ("face-default", "1")
        assert detect_ok(service).headers["X-Model-Version"] == "1"
        assert "not the one that passed validation" in service.log()
    assert sorted(p.relative_to(store / "models").as_posix() for p in (store / "models").glob("*/*")) == [
        "face-default/1"
    ]
