"""The manifest is published atomically and generations never repeat, even across processes."""
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from twinfer.manifest import ManifestError, publish, read_manifest, unpublish
from twinfer.store_layout import StoreLayout


def _publish_many(store: str, worker: int, count: int) -> list[int]:
    from pathlib import Path

    return [
        publish(Path(store), f"model{worker}", str(i), f"models/model{worker}/{i}", "onnx", "ssd_anchors").generation
        for i in range(count)
    ]


def _read_forever(store: str, stop, failures) -> None:
    from pathlib import Path

    seen = 0
    while not stop.is_set():
        try:
            manifest = read_manifest(Path(store))
        except (json.JSONDecodeError, TypeError) as exc:
            failures.put(repr(exc))
            return
        if manifest is not None:
            for entry in manifest.models.values():
                assert entry.directory == f"models/{entry.name}/{entry.version}"
            seen += 1
    failures.put(None)


def test_empty_store_has_no_manifest(tmp_path):
    assert read_manifest(tmp_path) is None


def test_publish_increments_generation_and_round_trips(tmp_path):
    first = publish(tmp_path, "ssd", "1.0.0", "models/ssd/1.0.0", "onnx", "ssd_anchors")
    second = publish(tmp_path, "ssd", "1.1.0", "models/ssd/1.1.0", "tflite", "ssd_anchors")
    assert (first.generation, second.generation) == (1, 2)
    assert read_manifest(tmp_path).default_entry == second
    assert second.model_dir(tmp_path) == tmp_path / "models/ssd/1.1.0"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_concurrent_publishers_get_unique_generations_and_readers_never_see_a_partial_file(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    stop, failures = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_forever, args=(str(tmp_path), stop, failures))
    reader.start()
    with ctx.Pool(3) as pool:
        results = pool.starmap(_publish_many, [(str(tmp_path), w, 40) for w in range(3)])
    stop.set()
    reader.join(30)
    assert failures.get(timeout=10) is None
    generations = sorted(g for r in results for g in r)
    assert generations == list(range(1, 121))
    assert read_manifest(tmp_path).generation == 120
    assert json.loads(StoreLayout(tmp_path).manifest.read_text())["generation"] == 120


def test_several_models_each_with_its_own_generation_and_one_default(tmp_path):
    ssd = publish(tmp_path, "ssd", "1", "models/ssd/1", "onnx", "ssd_anchors")
    face = publish(tmp_path, "face", "1", "models/face/1", "tflite", "blazeface")
    ssd2 = publish(tmp_path, "ssd", "2", "models/ssd/2", "onnx", "ssd_anchors")
    manifest = read_manifest(tmp_path)
    assert (ssd.generation, face.generation, ssd2.generation, manifest.generation) == (1, 2, 3, 3)
    assert manifest.default == "ssd" and manifest.models == {"ssd": ssd2, "face": face}
    assert manifest.entry() == ssd2 and manifest.entry("face") == face and manifest.entry("nope") is None


def test_removing_a_model_bumps_the_generation_and_the_default_cannot_be_removed(tmp_path):
    publish(tmp_path, "ssd", "1", "models/ssd/1", "onnx", "ssd_anchors")
    publish(tmp_path, "face", "1", "models/face/1", "tflite", "blazeface")
    after = unpublish(tmp_path, "face")
    assert set(after.models) == {"ssd"} and after.generation == 3 and read_manifest(tmp_path) == after
    with pytest.raises(ManifestError, match="default"):
        unpublish(tmp_path, "ssd")
    with pytest.raises(ManifestError, match="not in the manifest"):
        unpublish(tmp_path, "face")


def test_a_new_default_of_another_name_replaces_the_old_default_only(tmp_path):
    publish(tmp_path, "ssd", "1", "models/ssd/1", "onnx", "ssd_anchors")
    publish(tmp_path, "face", "1", "models/face/1", "tflite", "blazeface")
    publish(tmp_path, "yolo", "1", "models/yolo/1", "onnx", "yolo", default=True)
    manifest = read_manifest(tmp_path)
    assert manifest.default == "yolo" and set(manifest.models) == {"yolo", "face"}


def test_admit_sees_the_manifest_under_the_lock_and_its_refusal_writes_nothing(tmp_path):
    publish(tmp_path, "ssd", "1", "models/ssd/1", "onnx", "ssd_anchors")
    before = StoreLayout(tmp_path).manifest.read_bytes()
    seen = []

    def refuse(current):
        seen.append(set(current.models))
        raise ValueError("over budget")

    with pytest.raises(ValueError, match="over budget"):
        publish(tmp_path, "face", "1", "models/face/1", "tflite", "blazeface", admit=refuse)
    assert seen == [{"ssd"}] and StoreLayout(tmp_path).manifest.read_bytes() == before


def test_a_manifest_of_an_earlier_release_reads_as_a_pool_of_its_one_model(tmp_path):
    StoreLayout(tmp_path).manifest.write_text(json.dumps({
        "name": "ssd", "version": "1.0.0", "directory": "models/ssd/1.0.0", "format": "onnx",
        "decoder": "ssd_anchors", "generation": 7, "published_at": 1.0, "score_threshold": 0.4,
    }))
    manifest = read_manifest(tmp_path)
    assert (manifest.generation, manifest.default, manifest.default_entry.score_threshold) == (7, "ssd", 0.4)
    assert publish(tmp_path, "face", "1", "models/face/1", "tflite", "blazeface").generation == 8
    assert set(read_manifest(tmp_path).models) == {"ssd", "face"}
