"""Rolling hot swap across a real gunicorn pool under continuous load."""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass

import pytest
import requests

from tests.support.bundles import model_desired, ssd_tflite_bundle
from tests.support.client_load import ClientLoad
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, model_status
from tests.support.paths import IMAGES
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from tests.support.waiting import wait_until
from twinfer.manifest import publish, read_default
from twinfer.worker_state import read_states

pytestmark = pytest.mark.processes  # every test here starts processes

ONNX = ("ssd-mobilenetv2-oidv4", "1.0.0")
TFLITE = ("ssd-tflite", "2.0.0")
ENV = QUICK_REPORTS


@dataclass(frozen=True)
class Sample:
    started: float
    finished: float
    status: int
    worker: str | None
    version: str | None
    error: str | None = None


PHOTO = (IMAGES / "chelsea.png").read_bytes()


def _post_photo(url: str) -> Sample:
    """One /detect of a photo, recorded (a failed connection as status 0)."""
    started = time.time()
    try:
        r = requests.post(url + "/detect", data=PHOTO, headers={"Content-Type": "image/png"}, timeout=30)
        return Sample(started, time.time(), r.status_code, r.headers.get("X-Twinfer-Worker"),
                      r.headers.get("X-Model-Version"))
    except requests.RequestException as exc:
        return Sample(started, time.time(), 0, None, None, repr(exc))


def detect_load(url: str, threads: int = 4) -> ClientLoad[Sample]:
    """Client threads posting the photo back to back, recording every answer."""
    return ClientLoad([f"client {i}" for i in range(threads)], lambda _: _post_photo(url))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    store = tmp_path_factory.mktemp("swap") / "store"
    with FileServer() as files, ServiceProcess.start(store, workers=2, extra_env=ENV) as service:
        twin = LocalTwinFiles(store)
        bundle = ssd_tflite_bundle()
        files.put("/ssd-tflite-2.0.0.zip", bundle.data)
        url = files.url("/ssd-tflite-2.0.0.zip")
        twin.set_desired(model_desired(*TFLITE, url, bundle))
        twin.wait_reported(lambda r: _rolled_out(r, TFLITE[1]), timeout=120)
        yield service, twin, url, bundle


def _default_version(state) -> str:
    """The version of the one model a worker of this pool serves (the default)."""
    (only,) = state.models.values()
    return only["version"]


def _rolled_out(reported: dict, version: str) -> bool:
    status = model_status(reported)
    return status["state"] == "active" and status["active"]["version"] == version and status["rollout"]["complete"] and (
        status["rollout"]["generation"] == status["active"]["generation"]
    )


def _swap_to(twin: LocalTwinFiles, target: tuple[str, str], url: str, bundle) -> int:
    twin.set_desired(model_desired(*target, url, bundle))
    reported = twin.wait_reported(lambda r: _rolled_out(r, target[1]), timeout=120)
    return model_status(reported)["active"]["generation"]


def test_ten_swaps_between_onnx_and_litert_under_load_fail_no_request(pool):
    service, twin, url, bundle = pool
    published = [TFLITE[1]]
    with detect_load(service.url, threads=4) as load:
        time.sleep(1.0)
        for i in range(10):
            target = ONNX if i % 2 == 0 else TFLITE
            _swap_to(twin, target, url, bundle)
            published.append(target[1])
            time.sleep(0.3)
    samples = load.every()
    failures = [s for s in samples if s.status != 200]
    assert not failures, failures[:5]
    assert len(samples) > 100
    assert {s.version for s in samples} == {ONNX[1], TFLITE[1]}
    states = read_states(service.store)
    assert {_default_version(s) for s in states} == {TFLITE[1]} and len(states) == 2
    by_worker: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.started):
        by_worker.setdefault(sample.worker, []).append(sample)
    assert set(by_worker) == {str(s.pid) for s in states}
    for state in states:
        # Each worker's answers change version only at its own swaps: a request is served
        # by the model current when the worker handled it, somewhere between the client's
        # send and its answer; a worker's model changes only inside one of its reloads.
        reloads = [r for r in state.reloads if r["ok"]]
        assert [r["version"] for r in reloads[-11:]] == published
        for sample in by_worker[str(state.pid)]:
            before = [r for r in reloads if r["finished"] < sample.started]
            overlapping = [r for r in reloads if r["started"] <= sample.finished and r["finished"] >= sample.started]
            allowed = {before[-1]["version"]} if before else set()
            allowed |= {r["version"] for r in overlapping}
            assert sample.version in allowed, (state.pid, sample, before[-1:], overlapping)


def test_two_workers_never_reload_at_the_same_time(pool):
    """Its own swaps, under load: each worker reloads once per swap, one after the other."""
    service, twin, url, bundle = pool
    since = time.time()  # the reload records' clock
    swaps = [ONNX, TFLITE, ONNX, TFLITE] if read_default(service.store).version == TFLITE[1] else [TFLITE, ONNX] * 2
    with detect_load(service.url, threads=2):
        for target in swaps:
            _swap_to(twin, target, url, bundle)
    states = read_states(service.store)
    intervals = sorted((r["started"], r["finished"], s.pid) for s in states for r in s.reloads if r["started"] >= since)
    assert len(intervals) == len(swaps) * len(states) == 8
    for (start_a, end_a, pid_a), (start_b, end_b, pid_b) in zip(intervals, intervals[1:]):
        assert end_a <= start_b, f"worker {pid_a} reloaded {start_a:.3f}-{end_a:.3f} while {pid_b} started at {start_b:.3f}"


def test_model_that_fails_in_workers_is_rolled_back(pool):
    service, twin, *_ = pool
    before = read_default(service.store)
    broken = service.store / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"passed staging, then the disk ate it")
    bad = publish(service.store, "broken", "1", "models/broken/1", "onnx", "ssd_anchors", default=True)
    reported = twin.wait_reported(
        lambda r: model_status(r)["state"] == "rolled_back" and model_status(r)["last_error"]["reason"] == "worker_load_failed",
        timeout=60,
    )
    assert "broken 1" in model_status(reported)["last_error"]["message"]
    def rolled_back() -> tuple | None:
        manifest, states = read_default(service.store), read_states(service.store)
        back = manifest.generation > bad.generation and len(states) == 2
        on_it = all(s.generation_of(manifest.name) == manifest.generation for s in states)
        return (manifest, states) if back and on_it else None

    manifest, states = wait_until(rolled_back, "both workers on the rolled-back generation", 30)
    assert (manifest.name, manifest.version) == (before.name, before.version)
    data = (IMAGES / "chelsea.png").read_bytes()
    answers = {requests.post(service.url + "/detect", data=data, timeout=10).headers["X-Model-Version"] for _ in range(10)}
    assert answers == {before.version}
    shutil.rmtree(broken.parent)


def test_kill_9_of_a_worker_under_load_fails_only_its_in_flight_request(pool):
    service, *_ = pool
    current = read_default(service.store)
    victim = read_states(service.store)[0].pid
    with detect_load(service.url, threads=4) as load:
        time.sleep(1.0)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        def respawned() -> bool:
            states = read_states(service.store)
            return len(states) >= 2 and victim not in [s.pid for s in states]

        wait_until(respawned, "gunicorn respawned the killed worker", 30)
        time.sleep(2.0)
    samples = load.every()
    failures = [s for s in samples if s.status != 200]
    # only the victim's in-flight requests may fail: with gthread workers that is at most
    # one per client thread, and every one of them was sent before the kill
    assert len(failures) <= 4, failures
    assert all(s.started <= killed_at for s in failures), failures
    states = read_states(service.store)
    assert victim not in [s.pid for s in states] and len(states) == 2
    first = min(sample.started for sample in samples)
    respawned = [s for s in states if s.pid != victim and s.models[current.name]["loaded_at"] > first]
    assert respawned and all(s.generation_of(current.name) == current.generation for s in respawned)
    late = [s for s in samples if s.worker == str(respawned[0].pid)]
    assert late and all(s.version == current.version for s in late)
