"""``bundle --quantize int8`` and ``bundle --reference``, as an operator runs them: the int8
variant, its agreement, size and speed measured against the reference, the gate, and the
verification set every device checks."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.verification import SET_FILE
from tests.support.cli import cli
from tests.support.finetune import head_initializers
from tests.support.paths import DEFAULT_MODEL, IMAGES, PROJECT_ROOT

pytestmark = pytest.mark.processes  # every test here starts processes

MODEL = DEFAULT_MODEL / "model.onnx"
SIDE_FILES = ("--labels", str(DEFAULT_MODEL / "labels.txt"), "--metadata", str(DEFAULT_MODEL / "twinfer.json"))


def quantize(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("bundle", str(MODEL), *SIDE_FILES, "--name", "ssd", "--version", "2.0", "--quantize", "int8",
               "--calibration", str(IMAGES), "-o", str(out), *extra, timeout=300)


@pytest.fixture(scope="module")
def int8(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "ssd_2.0_int8.zip"
    done = quantize(out, "--json")
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def test_the_int8_variant_agrees_with_its_reference_and_is_a_third_of_the_download(int8, tmp_path):
    out, result = int8
    variant = result["variant"]
    assert variant["precision"] == "int8" and variant["gate"]["min_f1"] == 0.95
    assert variant["agreement"]["f1"] >= 0.95 and variant["agreement"]["pictures"] == 5
    assert variant["agreement"]["reference_detections"] >= 3 and variant["agreement"]["mean_score_diff"] < 0.05
    assert variant["size_ratio"] < 0.35 and variant["variant_ms"] > 0 and variant["reference_ms"] > 0
    fp32 = tmp_path / "fp32.zip"
    assert cli("bundle", str(MODEL), *SIDE_FILES, "-o", str(fp32)).returncode == 0
    assert out.stat().st_size <= 0.35 * fp32.stat().st_size  # verification set included
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        stored = json.loads(archive.read(SET_FILE))
        graph = onnx.load_from_string(archive.read("model.onnx")).graph
    assert names[0] == "model.onnx" and {"labels.txt", "twinfer.json", SET_FILE} <= set(names)
    assert sorted(n for n in names if n.endswith(".jpg")) == [f"twinfer-verification-{i}.jpg" for i in (1, 2, 3, 4)]
    assert stored["gate"] == {"min_f1": 0.95, "iou": 0.5, "score_tolerance": 0.05}
    assert stored["reference"]["model"] == "model.onnx" and stored["operator"]["agreement"] == variant["agreement"]
    assert "reference_ms" not in stored["operator"]  # timings never repeat: the bundle's bytes must
    assert sum(1 for node in graph.node if node.op_type == "QuantizeLinear") > 50  # QDQ by default


def test_the_same_inputs_give_the_same_int8_bundle_and_the_output_says_agreement_size_and_speed(int8, tmp_path):
    out, result = int8
    again = tmp_path / "again.zip"
    done = quantize(again)  # the human output this time
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines() if line and not line.startswith(" "))
    assert lines["sha256"] == result["sha256"]  # deltas between int8 versions need the same bytes
    assert lines["agreement"].startswith("F1 ") and "reference detections found" in lines["agreement"]
    assert "ms per inference" in lines["speed"] and "0.28x the reference's 19891758" in done.stdout


def _damaged_head(tmp_path: Path) -> Path:
    """The demo model with its detection head scrambled: a variant that no longer agrees."""
    model = onnx.load(MODEL)
    rng = np.random.default_rng(0)
    head = head_initializers(model)
    for init in model.graph.initializer:
        if init.name in head and init.data_type == onnx.TensorProto.FLOAT:
            weights = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(rng.permutation(weights.ravel()).reshape(weights.shape), init.name))
    out = tmp_path / "damaged.onnx"
    onnx.save(model, out)
    return out


def test_a_variant_below_the_gate_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "variant.zip"
    done = cli("bundle", str(_damaged_head(tmp_path)), "--reference", str(MODEL), *SIDE_FILES,
               "--calibration", str(IMAGES), "-o", str(out), timeout=300)
    assert done.returncode == 1 and not out.exists()
    assert "below the gate of 0.950" in done.stderr and "reference detections found" in done.stderr


def test_a_variant_made_elsewhere_is_verified_against_its_reference(tmp_path):
    """The reference itself as its own 'variant' passes with F1 1: the --reference path, end to end."""
    out = tmp_path / "same.zip"
    done = cli("bundle", str(MODEL), "--reference", str(MODEL), *SIDE_FILES, "--calibration", str(IMAGES),
               "--min-f1", "1.0", "-o", str(out), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["variant"]
    assert figures["agreement"]["f1"] == 1.0 and figures["agreement"]["mean_score_diff"] == 0.0


@pytest.mark.parametrize(("args", "message"), [
    (["--quantize", "int8"], "need --calibration DIR"),
    (["--calibration", str(IMAGES)], "--calibration goes with --quantize or --reference"),
    (["--reference", "missing.onnx", "--calibration", str(IMAGES)], "must be an existing .onnx or .tflite"),
])
def test_variant_options_are_checked_before_anything_is_built(tmp_path, args, message):
    done = cli("bundle", str(MODEL), *SIDE_FILES, *args, "-o", str(tmp_path / "x.zip"))
    assert done.returncode == 1 and message in done.stderr


def test_only_onnx_models_are_quantised_here(tmp_path):
    done = cli("bundle", str(PROJECT_ROOT / "tests/fixtures/models/blazeface_short_range.tflite"), "--quantize", "int8",
               "--calibration", str(IMAGES), "-o", str(tmp_path / "x.zip"))
    assert done.returncode == 1 and "--quantize works on ONNX models" in done.stderr


def test_without_the_operator_tools_quantising_says_what_to_install(tmp_path):
    """The device image has no onnx: the device side never needs it, and bundle says where it is."""
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import service.cli, service.update.updater, service.update.validation, service.verification\n"
        "from pathlib import Path\n"
        "from service.quantize import QuantizeError, quantize_onnx\n"
        "try:\n"
        "    quantize_onnx(None, Path('m.onnx'), Path('o.onnx'), [b'x'])\n"
        "except QuantizeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "requirements-operator.txt" in done.stdout


def test_twin_patch_offers_the_variants_in_order_and_delta_a_variant_of_its_own(int8, tmp_path):
    from service.update.desired import parse_desired

    out, _ = int8
    fp32 = tmp_path / "fp32.zip"
    assert cli("bundle", str(MODEL), *SIDE_FILES, "-o", str(fp32)).returncode == 0
    done = cli("twin-patch", "--name", "ssd", "--version", "2.0", "--variant", "int8", str(out), "https://f/int8.zip",
               "--variant", "fp32", str(fp32), "https://f/fp32.zip", "--drop-variant", "fp16", "--pin-variant", "fp32")
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    variants = patch["model"]["variants"]
    assert list(variants) == ["int8", "fp32", "fp16"] and variants["fp16"] is None
    assert variants["int8"]["version"] == "2.0" and variants["int8"]["size"] == out.stat().st_size
    assert patch["model"]["url"] is None and patch["model"]["variant"] == "fp32"  # nulls: IoT Hub merges patches
    assert variants["int8"]["compression"] is None and variants["int8"]["delta"] is None  # ... into the old entry
    target = parse_desired(patch).model
    assert [v.name for v in target.variants] == ["int8", "fp32"] and target.pinned_variant == "fp32"

    done = cli("delta", "--base", str(out), "--base-version", "1.9", "--bundle", str(out), "--name", "ssd",
               "--version", "2.0", "--url", "https://f/int8.zip", "--patch-url", "https://f/int8.zst",
               "--patch-out", str(tmp_path / "p.zst"), "--as-variant", "int8",
               "--variant", "fp32", str(fp32), "https://f/fp32.zip")
    assert done.returncode == 0, done.stderr
    variants = json.loads(done.stdout)["model"]["variants"]
    assert list(variants) == ["int8", "fp32"] and variants["int8"]["delta"]["base_version"] == "1.9"
    assert json.loads(done.stdout)["model"]["delta"] is None
    refused = cli("twin-patch", "--name", "ssd", "--version", "2.0", "--variant", "int8", str(out), "https://f/a.zip",
                  "--pin-variant", "fp32")
    assert refused.returncode == 2 and "model.variant 'fp32' is not one of model.variants" in refused.stderr


def test_set_model_writes_the_variants_into_the_local_twin(int8, tmp_path):
    from twinfer.manifest import publish

    out, result = int8
    store = tmp_path / "store"
    store.mkdir()
    publish(store, "ssd", "1.0", "models/ssd/1.0", "onnx", "ssd_anchors")  # a service's store
    done = cli("set-model", "--name", "ssd", "--version", "2.0", "--variant", "int8", str(out), "https://f/int8.zip",
               "--store", str(store))
    assert done.returncode == 0, done.stderr
    desired = json.loads((store / "twin" / "desired.json").read_text())
    assert desired["model"]["variants"]["int8"]["sha256"] == result["sha256"] and desired["model"].get("url") is None
