"""A bundle's verification set: a few pictures with the reference model's detections.

A quantised variant is only as good as the CPU it runs on (the same int8 model can lose
accuracy on one vendor's cores and not another's), so the operator's ``bundle`` command
writes, beside the model, a handful of its calibration pictures (downscaled) and what the
full-precision reference model found on them. A device runs the candidate on those
pictures during staging, on its own CPU, and refuses it when it agrees too little
(``service.update.validation``); the operator's machine runs the same check before the
bundle is written.

Agreement is the F1 of matched detections (same class, IoU >= ``gate.iou``), with a
tolerance band around the score threshold ``t``: a reference detection at or above ``t``
counts as found when the candidate has it at ``t - tolerance`` or more, and a candidate
detection at or above ``t`` counts as right when the reference has it at ``t - tolerance``
or more. So a score that moves from 0.51 to 0.49 is quantisation noise, not a miss, while
a detection that disappears or appears is one. Counts are summed over every picture.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # the operator's --help and the twin parser need none of the runtimes
    from twinfer.pipeline import VisionModel

SET_FILE = "twinfer-verification.json"  # in a bundle and a version directory, beside the model
PICTURE_PREFIX = "twinfer-verification-"  # the set's pictures: <prefix><n>.jpg
SET_FORMAT = 1
MAX_PICTURE_PIXELS = 4096 * 4096  # the set's pictures are downscaled far below this
JPEG_QUALITY = 92


class VerificationError(Exception):
    """The set is malformed, or a candidate falls below its gate (``agreement`` says by how much)."""

    def __init__(self, message: str, agreement: "Agreement | None" = None) -> None:
        super().__init__(message)
        self.agreement = agreement


@dataclass(frozen=True)
class Gate:
    """What a candidate must reach on the set's pictures."""

    min_f1: float = 0.95
    iou: float = 0.5
    score_tolerance: float = 0.05

    def check(self) -> "Gate":
        for key, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise VerificationError(f"gate {key} must be a number between 0 and 1, got {value!r}")
        return self


@dataclass(frozen=True)
class Found:
    """One detection: class id, score, box ``[xmin, ymin, xmax, ymax]`` normalised."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Agreement:
    """How far a candidate's detections agree with the reference's, summed over the pictures."""

    f1: float
    precision: float
    recall: float
    mean_score_diff: float  # over matched reference detections; 0 when none matched
    max_score_diff: float
    reference_detections: int  # at or above the threshold
    candidate_detections: int
    matched: int  # reference detections the candidate found
    pictures: int

    def passes(self, gate: Gate) -> bool:
        return self.f1 >= gate.min_f1

    def report(self) -> dict:
        """Rounded figures for the twin and the operator."""
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class VerificationSet:
    """The set as stored: its pictures' file names with the reference's detections, the
    threshold they were taken at, the gate, and a description of the reference."""

    pictures: tuple[tuple[str, tuple[Found, ...]], ...]
    score_threshold: float
    gate: Gate = Gate()
    reference: dict = field(default_factory=dict)  # e.g. precision, model sha256, runtime
    operator: dict = field(default_factory=dict)  # the agreement measured where the bundle was built

    def to_json(self) -> bytes:
        return json.dumps({
            "format": SET_FORMAT, "score_threshold": self.score_threshold, "gate": asdict(self.gate),
            "reference": self.reference, "operator": self.operator,
            "pictures": [{"file": name, "detections": [asdict(d) for d in found]} for name, found in self.pictures],
        }, indent=1).encode()


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matches(wanted: Sequence[Found], pool: Sequence[Found], iou: float) -> list[tuple[Found, Found]]:
    """Each of ``wanted`` (best score first) takes the unused detection of ``pool`` of its
    class that overlaps it most, if that overlap reaches ``iou``."""
    used: set[int] = set()
    pairs = []
    for want in sorted(wanted, key=lambda d: -d.score):
        best, best_iou = None, iou
        for index, candidate in enumerate(pool):
            if index in used or candidate.class_id != want.class_id:
                continue
            overlap = _iou(want.box, candidate.box)
            if overlap >= best_iou:
                best, best_iou = index, overlap
        if best is not None:
            used.add(best)
            pairs.append((want, pool[best]))
    return pairs


def agreement(
    reference: Sequence[Sequence[Found]], candidate: Sequence[Sequence[Found]], threshold: float, gate: Gate
) -> Agreement:
    """Compare per-picture detections (both taken at ``threshold - tolerance`` or lower)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate cover different pictures")
    low = threshold - gate.score_tolerance
    positives = predictions = found = right = 0
    diffs: list[float] = []
    for ref, cand in zip(reference, candidate):
        ref_sure = [d for d in ref if d.score >= threshold]
        cand_sure = [d for d in cand if d.score >= threshold]
        positives += len(ref_sure)
        predictions += len(cand_sure)
        pairs = _matches(ref_sure, [d for d in cand if d.score >= low], gate.iou)
        found += len(pairs)
        diffs += [abs(r.score - c.score) for r, c in pairs]
        right += len(_matches(cand_sure, [d for d in ref if d.score >= low], gate.iou))
    recall = found / positives if positives else 1.0
    precision = right / predictions if predictions else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Agreement(
        f1=f1, precision=precision, recall=recall,
        mean_score_diff=statistics.fmean(diffs) if diffs else 0.0, max_score_diff=max(diffs, default=0.0),
        reference_detections=positives, candidate_detections=predictions, matched=found, pictures=len(reference),
    )


def detections(model: "VisionModel", picture: bytes, threshold: float, gate: Gate) -> tuple[Found, ...]:
    """What ``model`` finds on ``picture`` down to the bottom of the tolerance band."""
    result = model.detect(picture, MAX_PICTURE_PIXELS, threshold=max(0.0, threshold - gate.score_tolerance))
    found = result.detections
    return tuple(
        Found(int(c), round(float(s), 5), tuple(round(float(v), 5) for v in box))  # type: ignore[arg-type]
        for box, s, c in zip(found.boxes, found.scores, found.class_ids)
    )


def _found(raw: object) -> Found:
    if not isinstance(raw, dict):
        raise VerificationError("a reference detection must be an object")
    box = raw.get("box")
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise VerificationError("a reference detection needs box [xmin, ymin, xmax, ymax]")
    if not isinstance(raw.get("class_id"), int) or not isinstance(raw.get("score"), (int, float)):
        raise VerificationError("a reference detection needs an integer class_id and a score")
    return Found(raw["class_id"], float(raw["score"]), tuple(float(v) for v in box))  # type: ignore[arg-type]


def read_set(directory: Path) -> VerificationSet | None:
    """The directory's verification set; None when it has none. Malformed: ``VerificationError``."""
    path = directory / SET_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{SET_FILE} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != SET_FORMAT:
        raise VerificationError(f"{SET_FILE}: format {raw.get('format') if isinstance(raw, dict) else None!r} "
                                f"is not {SET_FORMAT}")
    try:
        gate = Gate(**raw.get("gate", {})).check()
        threshold = float(raw["score_threshold"])
    except (TypeError, KeyError, ValueError) as exc:
        raise VerificationError(f"{SET_FILE}: bad gate or score_threshold ({exc})") from None
    pictures = []
    for entry in raw.get("pictures") or []:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.startswith(PICTURE_PREFIX) or "/" in name:
            raise VerificationError(f"{SET_FILE}: picture file names must start with {PICTURE_PREFIX}")
        if not (directory / name).is_file():
            raise VerificationError(f"{SET_FILE} names {name}, which the bundle does not hold")
        pictures.append((name, tuple(_found(d) for d in entry.get("detections") or [])))
    if not pictures:
        raise VerificationError(f"{SET_FILE} names no picture")
    return VerificationSet(tuple(pictures), threshold, gate, raw.get("reference") or {}, raw.get("operator") or {})


def verify(model: "VisionModel", directory: Path) -> Agreement | None:
    """Run ``model`` on the directory's verification set; None without a set. Below the
    gate: ``VerificationError`` carrying the agreement."""
    verification = read_set(directory)
    if verification is None:
        return None
    if not model.is_detector:
        raise VerificationError(f"the bundle's verification set compares detections, but this is a {model.task} "
                                "model: bundle it without a variant's verification set")
    threshold, gate = verification.score_threshold, verification.gate
    candidate = [detections(model, (directory / name).read_bytes(), threshold, gate) for name, _ in verification.pictures]
    measured = agreement([found for _, found in verification.pictures], candidate, threshold, gate)
    if not measured.passes(gate):
        raise VerificationError(
            f"on this device's CPU the model agrees with its reference model ({describe(verification.reference)}) "
            f"at F1 {measured.f1:.3f}, below the bundle's gate of {gate.min_f1:.3f} "
            f"({measured.matched} of {measured.reference_detections} reference detections found, "
            f"{measured.candidate_detections} detections made, mean score difference {measured.mean_score_diff:.3f}, "
            f"{measured.pictures} pictures)",
            measured,
        )
    return measured


def describe(reference: dict) -> str:
    """The reference model in a few words: its file and the runtime it ran on."""
    return " on ".join(str(reference[key]) for key in ("model", "runtime") if key in reference) or "unnamed"


def downscaled_jpeg(picture: bytes, width: int, height: int) -> bytes:
    """The picture at the smallest size that still covers a ``width`` x ``height`` model
    input (never upscaled), as a JPEG: a few tens of KB on the wire."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VerificationError("a calibration picture could not be decoded")
    scale = min(1.0, max(width / image.shape[1], height / image.shape[0]))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise VerificationError("OpenCV could not encode a verification picture")
    return encoded.tobytes()


def build_set(
    reference_model: "VisionModel", pictures: Iterable[bytes], count: int, gate: Gate, reference: dict
) -> tuple[VerificationSet, dict[str, bytes]]:
    """The ``count`` pictures on which the reference finds the most (ties: the order given),
    downscaled, with the reference's detections on exactly those bytes; returns the set and
    its files. Refused when the reference finds nothing on any: the check would be empty."""
    threshold = reference_model.spec.score_threshold
    scaled = [downscaled_jpeg(p, reference_model.input_width, reference_model.input_height) for p in pictures]
    found = [detections(reference_model, data, threshold, gate) for data in scaled]
    sure = [sum(1 for d in f if d.score >= threshold) for f in found]
    chosen = sorted(range(len(scaled)), key=lambda i: (-sure[i], i))[:count]
    if not chosen or sum(sure[i] for i in chosen) == 0:
        raise VerificationError(
            f"the reference model detects nothing at its threshold {threshold} on the calibration pictures: "
            f"a verification set without detections checks nothing; add pictures showing the model's classes"
        )
    files = {f"{PICTURE_PREFIX}{n + 1}.jpg": scaled[i] for n, i in enumerate(chosen)}
    entries = tuple((name, found[i]) for name, i in zip(files, chosen))
    return VerificationSet(entries, threshold, gate, reference), files


def write_set(directory: Path, verification: VerificationSet, files: dict[str, bytes]) -> None:
    """The set's pictures and its description, into a directory that becomes a bundle."""
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / SET_FILE).write_bytes(verification.to_json())
