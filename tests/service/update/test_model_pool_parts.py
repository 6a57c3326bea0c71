"""The parts of the model pool that need no process: splitting the desired document into
lanes, the memory budget's arithmetic, and the link the downloads share (injected clock)."""
from __future__ import annotations

import re

import pytest

from service.update.desired import DesiredError, parse_desired
from service.update.failures import UpdateFailed
from service.update.link import SharedLink
from service.update.memory_budget import MemoryBudget
from service.update.pool_desired import ERROR_KEY, lane_documents, model_entries
from twinfer.manifest import publish, read_manifest

SHA = "a" * 64


def _spec(version: str = "1", **extra) -> dict:
    return {"version": version, "url": "https://blob.example/m.zip", "sha256": SHA, **extra}


def test_each_model_gets_its_part_with_the_shared_download_settings_and_its_own_threshold():
    document = {"$version": 4, "model": {"name": "ssd", **_spec("2")}, "download": {"max_bytes_per_second": 4096},
                "models": {"face": _spec("3", inference={"score_threshold": 0.6}), "pose": _spec()}}
    default, lanes = lane_documents(document, set())
    assert "models" not in default and default["model"]["name"] == "ssd" and default["$version"] == 4
    assert set(lanes) == {"face", "pose"}
    face = parse_desired(lanes["face"])
    assert (face.model.name, face.model.version, face.score_threshold, face.max_bytes_per_second) == (
        "face", "3", 0.6, 4096)
    assert parse_desired(lanes["pose"]).score_threshold is None


def test_a_model_the_pool_holds_that_the_document_lacks_gets_a_removal():
    _, lanes = lane_documents({"$version": 9, "models": {"face": _spec()}}, {"face", "pose"})
    assert parse_desired(lanes["pose"]).model is None and lanes["pose"] == {"$version": 9}
    assert parse_desired(lanes["face"]).model.name == "face"


@pytest.mark.parametrize(("models", "message"), [
    ("face", "models must be an object"),
    ({"../x": _spec()}, "models key '../x'"),
    ({"face": "v1"}, "models.face must be an object"),
    ({"face": {**_spec(), "name": "body"}}, "the key is the model's name"),
    ({"ssd": _spec()}, "both model (the default) and a key of models"),
    ({"face": _spec(signature="x" * 5000)}, "models.face is over IoT Hub's 4096 byte limit"),
])
def test_malformed_models_are_refused_on_the_default_lane_and_no_other_lane_moves(models, message):
    document = {"model": {"name": "ssd", **_spec()}, "models": models}
    with pytest.raises(DesiredError, match=re.escape(message)):
        model_entries(document)
    default, lanes = lane_documents(document, {"pose"})
    assert lanes == {} and message in default[ERROR_KEY]
    with pytest.raises(DesiredError, match=re.escape(message)):
        parse_desired(default)


def test_several_models_may_hold_more_than_4_kb_together_but_the_document_stays_within_32_kb():
    models = {f"m{i}": _spec(signature="s" * 3000) for i in range(3)}  # 3 x ~3.1 KB
    assert set(model_entries({"models": models})) == {"m0", "m1", "m2"}
    many = {f"m{i}": _spec(signature="s" * 3000) for i in range(11)}
    with pytest.raises(DesiredError, match="32768 byte limit"):
        model_entries({"models": many})


def _stage(store, name: str, version: str, size: int) -> None:
    directory = store / "models" / name / version
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"\0" * size)
    publish(store, name, version, f"models/{name}/{version}", "onnx", "ssd_anchors")


def test_the_budget_counts_the_other_models_once_and_the_replaced_version_not_at_all(tmp_path):
    _stage(tmp_path, "ssd", "1", 6 * 2**20)
    _stage(tmp_path, "face", "1", 2 * 2**20)
    manifest = read_manifest(tmp_path)
    budget = MemoryBudget(10 * 2**20)
    budget.check(tmp_path, manifest, "pose", "1", 2 * 2**20)  # 6 + 2 + 2 = 10: fits exactly
    budget.check(tmp_path, manifest, "ssd", "2", 8 * 2**20)  # replaces ssd 1: 8 + 2
    with pytest.raises(UpdateFailed) as refused:
        budget.check(tmp_path, manifest, "pose", "1", 2 * 2**20 + 1)
    assert refused.value.reason == "memory_budget"
    assert refused.value.message.startswith(
        "pose 1 needs 2.0 MiB of weights; the other models serving hold 8.0 MiB (face 2.0 MiB, ssd 6.0 MiB); "
        "together 10.0 MiB, over TWINFER_MODEL_MEMORY_BUDGET of 10.0 MiB")
    MemoryBudget(None).check(tmp_path, manifest, "pose", "1", 10**12)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _simulate(link: SharedLink, clock: _Clock, downloads: int, chunks: int, rate: int, chunk: int) -> dict[int, int]:
    """Downloads on an infinitely fast network, each sleeping what the link tells it:
    bytes each got by the end."""
    wake = {d: clock.now for d in range(downloads)}
    got = dict.fromkeys(wake, 0)
    for _ in range(chunks):
        who = min(wake, key=wake.get)
        clock.now = wake[who]
        got[who] += chunk
        wake[who] = clock.now + link.reserve(chunk, rate)
    clock.now = max(wake.values())
    return got


def test_downloads_at_once_share_the_cap_and_one_alone_gets_all_of_it():
    rate, chunk = 1000, 100
    clock = _Clock()
    start = clock.now
    alone = _simulate(SharedLink(clock), clock, 1, 50, rate, chunk)
    assert alone[0] / (clock.now - start) == pytest.approx(rate, rel=0.03)
    clock = _Clock()
    start = clock.now
    two = _simulate(SharedLink(clock), clock, 2, 100, rate, chunk)
    assert sum(two.values()) / (clock.now - start) == pytest.approx(rate, rel=0.03)  # the cap, not twice it
    assert two[0] == pytest.approx(two[1], rel=0.05)  # half each


def test_a_slow_link_never_waits_and_an_idle_one_banks_nothing():
    clock = _Clock()
    link = SharedLink(clock)
    for _ in range(3):  # 100 bytes a second at a 1000 B/s cap
        clock.now += 1.0
        assert link.reserve(100, 1000) == pytest.approx(0.0)
    clock.now += 60  # idle for a minute: the next chunks are paced at once, no burst
    assert [link.reserve(100, 1000) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
