"""The manifest is published atomically and generations never repeat, even across processes."""
from __future__ import annotations

import json
import multiprocessing
import os

from twinfer.manifest import publish, read_manifest
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
            assert manifest.directory == f"models/{manifest.name}/{manifest.version}"
            seen += 1
    failures.put(None)


def test_empty_store_has_no_manifest(tmp_path):
    assert read_manifest(tmp_path) is None


def test_publish_increments_generation_and_round_trips(tmp_path):
    first = publish(tmp_path, "ssd", "1.0.0", "models/ssd/1.0.0", "onnx", "ssd_anchors")
    second = publish(tmp_path, "ssd", "1.1.0", "models/ssd/1.1.0", "tflite", "ssd_anchors")
    assert (first.generation, second.generation) == (1, 2)
    assert read_manifest(tmp_path) == second
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
