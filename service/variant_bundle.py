"""Operator side: a model variant (e.g. int8) made, measured against its reference and given a
verification set before it is bundled (``bundle --quantize`` / ``bundle --reference``).

* ``--quantize int8 --calibration DIR``: the model file is the reference (fp32 ONNX); its
  int8 variant is made here (``service.quantize``);
* ``--reference REF --calibration DIR``: the model file is a variant made elsewhere (an int8
  ``.tflite`` from a TFLite converter), ``REF`` the model it stands in for.

Either way both run on every calibration picture and the variant's agreement (F1 of matched
detections, mean score difference: ``service.verification``), its size and its speed are
measured on this machine; below the gate nothing is written. The bundle then carries the
pictures on which the reference finds the most, downscaled, with the reference's detections:
every device checks the variant on its own CPU before serving it.
"""
from __future__ import annotations

import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.quantize import QuantizeOptions, quantize_onnx
from service.verification import MAX_PICTURE_PIXELS, Agreement, Gate, agreement, build_set, detections, write_set
from twinfer.engines import EngineOptions, format_of, runtime
from twinfer.engines.artifacts import file_sha256
from twinfer.loader import find_model_file, load_model
from twinfer.pipeline import VisionModel

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TIMING_RUNS = 15  # per model, interleaved, after one warm-up each
_OPTIONS = EngineOptions(intra_op_threads=1, use_host_artifacts=False)  # what one worker of a 2-core pool uses


class VariantError(Exception):
    """The variant cannot be made or falls below the gate; the message says why."""


@dataclass(frozen=True)
class VariantReport:
    """What the operator is told: agreement on the calibration pictures, size, speed."""

    precision: str
    agreement: Agreement
    gate: Gate
    reference_model_bytes: int
    variant_model_bytes: int
    reference_ms: float  # median inference time, one thread, on this machine
    variant_ms: float

    @property
    def size_ratio(self) -> float:
        return self.variant_model_bytes / self.reference_model_bytes

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.variant_ms

    def measured(self) -> dict:
        """What the bundle's verification set records of the operator's run: reproducible
        figures only (the same inputs give the same bundle bytes; timings never repeat)."""
        return {
            "precision": self.precision, "agreement": self.agreement.report(), "gate": asdict(self.gate),
            "reference_model_bytes": self.reference_model_bytes, "variant_model_bytes": self.variant_model_bytes,
            "size_ratio": round(self.size_ratio, 3),
        }

    def figures(self) -> dict:
        """What the operator is shown: the measured figures and the speed on this machine."""
        return {**self.measured(), "reference_ms": round(self.reference_ms, 2), "variant_ms": round(self.variant_ms, 2),
                "speedup": round(self.speedup, 2)}


def calibration_pictures(directory: Path, limit: int) -> list[bytes]:
    """Up to ``limit`` pictures of ``directory`` (by name, so runs repeat)."""
    if not directory.is_dir():
        raise VariantError(f"calibration directory {directory} does not exist")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file())
    if not paths:
        raise VariantError(f"{directory} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
    return [p.read_bytes() for p in paths[:limit]]


def _median_inference_ms(models: tuple[VisionModel, VisionModel], picture: bytes) -> tuple[float, float]:
    """Both models on one picture, interleaved (the machine may be shared), medians in ms."""
    times: tuple[list[float], list[float]] = ([], [])
    for model in models:
        model.detect(picture, MAX_PICTURE_PIXELS)
    for _ in range(TIMING_RUNS):
        for model, sink in zip(models, times):
            sink.append(model.detect(picture, MAX_PICTURE_PIXELS).timings.inference_ms)
    return statistics.median(times[0]), statistics.median(times[1])


def make_variant(
    reference_dir: Path, variant_model: Path | None, into: Path, pictures: list[bytes], *, precision: str,
    quantize: QuantizeOptions | None, gate: Gate, verification_pictures: int, enforce_gate: bool = True,
    calibration: list[bytes] | None = None,
) -> VariantReport:
    """Make (``quantize``) or take (``variant_model``) the variant of the model in
    ``reference_dir``, written into the empty directory ``into`` beside copies of the
    reference's other files and the verification set: ``into`` then holds the bundle's
    files. Quantisation calibrates on ``calibration`` (default: ``pictures``, which the
    agreement is measured on). ``enforce_gate=False`` writes a variant below the gate (the
    tests' broken quantisation, which devices must refuse on their own)."""
    reference_path = find_model_file(reference_dir)
    reference = load_model(reference_dir, "reference", "0", _OPTIONS)
    if not reference.is_detector:
        raise VariantError(f"variants are measured by their detections; this is a {reference.task} model "
                           "(quantise it elsewhere and bundle it as a model of its own)")
    for item in reference_dir.iterdir():
        if item.is_file() and item != reference_path:
            shutil.copyfile(item, into / item.name)
    if quantize is not None:
        target = into / reference_path.name  # same name: a later version's delta lines up
        quantize_onnx(reference, reference_path, target, calibration or pictures, quantize)
    else:
        assert variant_model is not None
        target = into / variant_model.name
        shutil.copyfile(variant_model, target)
    try:
        variant = load_model(into, "variant", "0", _OPTIONS)
    except Exception as exc:  # the runtime's own errors for a bad file
        raise VariantError(f"the variant does not load: {exc}") from None
    threshold = reference.spec.score_threshold
    measured = agreement(
        [detections(reference, p, threshold, gate) for p in pictures],
        [detections(variant, p, threshold, gate) for p in pictures], threshold, gate,
    )
    reference_ms, variant_ms = _median_inference_ms((reference, variant), pictures[0])
    report = VariantReport(precision, measured, gate, reference_path.stat().st_size, target.stat().st_size,
                           reference_ms, variant_ms)
    if enforce_gate and not measured.passes(gate):
        raise VariantError(
            f"the {precision} variant agrees with the reference at F1 {measured.f1:.3f} on {measured.pictures} "
            f"calibration pictures, below the gate of {gate.min_f1:.3f} ({measured.matched} of "
            f"{measured.reference_detections} reference detections found, {measured.candidate_detections} made); "
            f"try --per-tensor or --calibrate-method, more calibration pictures, or --exclude-node")
    fmt = format_of(reference_path)
    described = {"model": reference_path.name, "sha256": file_sha256(reference_path),
                 "runtime": f"{runtime(fmt).short_name} {runtime(fmt).version()}"}
    verification, files = build_set(reference, pictures, verification_pictures, gate, described)
    write_set(into, replace(verification, operator=report.measured()), files)
    return report
