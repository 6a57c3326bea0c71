"""The answer documents of ``POST /detect`` and ``POST /predict``, one writer per task.

Every coordinate is given normalised to the picture (``x``, ``box``) and in its pixels
(``x_px``, ``box_px``); scores are rounded to 5 places, pixels to 0.1. The envelope
(``task``, ``model``, ``image``, the task's result, ``timing_ms``) is ``envelope``'s.
"""
from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np

from twinfer.chain import CropResult
from twinfer.decoders.base import Detections
from twinfer.imaging import ImageHeader
from twinfer.manifest import ModelEntry
from twinfer.pipeline import Prediction, VisionModel
from twinfer.tasks import CLASSIFICATION, DETECTION, KEYPOINTS, SEGMENTATION, Classes, Landmarks, SegmentationMask

MASK_FORMATS = ("png", "rle")
# A class map compresses well without PNG's row filters, which cost most of the encoding:
# a 1080p mask takes 3.6 ms here without them, 16 ms with OpenCV's default (12 KB either way).
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def _box(xmin: float, ymin: float, xmax: float, ymax: float, width: int, height: int) -> dict:
    return {
        "box": {"xmin": round(xmin, 5), "ymin": round(ymin, 5), "xmax": round(xmax, 5), "ymax": round(ymax, 5)},
        "box_px": {"xmin": round(xmin * width, 1), "ymin": round(ymin * height, 1),
                   "xmax": round(xmax * width, 1), "ymax": round(ymax * height, 1)},
    }


def _point(name: str, x: float, y: float, width: int, height: int) -> dict:
    return {"name": name, "x": round(x, 5), "y": round(y, 5), "x_px": round(x * width, 1), "y_px": round(y * height, 1)}


def detection_items(detections: Detections, model: VisionModel, width: int, height: int) -> list[dict]:
    """``/detect``'s ``detections``: label, class id, score, box; a family's keypoints too."""
    names = getattr(model.decoder, "keypoint_names", ())
    items = []
    for index, (box, score, class_id) in enumerate(zip(
        detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()
    )):
        item = {"label": model.label(class_id), "class_id": class_id, "score": round(score, 5),
                **_box(*box, width, height)}
        if detections.keypoints is not None:
            item["keypoints"] = [_point(names[k] if k < len(names) else f"keypoint_{k}", x, y, width, height)
                                 for k, (x, y) in enumerate(detections.keypoints[index].tolist())]
        items.append(item)
    return items


def class_items(classes: Classes, model: VisionModel) -> list[dict]:
    return [{"label": model.label(class_id), "class_id": class_id, "score": round(score, 5)}
            for class_id, score in zip(classes.class_ids.tolist(), classes.scores.tolist())]


def landmark_instance(instance: Landmarks, names: tuple[str, ...], width: int, height: int) -> dict:
    """One body, hand or face: its score, the box around its points, and every point."""
    points = []
    for k, (x, y) in enumerate(instance.points.tolist()):
        point = _point(names[k], x, y, width, height)
        for key, values in (("z", instance.depth), ("visibility", instance.visibility),
                            ("presence", instance.presence)):
            if values is not None:
                point[key] = round(float(values[k]), 5)
        points.append(point)
    document = {"score": round(instance.score, 5), **_box(*instance.box(), width, height), "keypoints": points}
    if instance.label is not None:
        document["label"] = {"name": instance.label, "score": round(float(instance.label_score or 0.0), 5)}
    return document


def _rle(class_map: np.ndarray, class_id: int) -> list[int]:
    """COCO's uncompressed RLE of one class: run lengths in column-major order, zeros first."""
    flat = cv2.transpose((class_map == class_id).view(np.uint8)).ravel()  # column-major, 10x numpy's F-order copy
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size])))
    return ([0] if flat.size and flat[0] else []) + counts.tolist()


def mask_document(mask: SegmentationMask, model: VisionModel, encoding: str) -> dict:
    """The class map (PNG of class ids, or COCO RLE per class but background) and each
    class's share of the picture."""
    height, width = mask.class_map.shape
    coverage = mask.coverage()
    classes = [{"class_id": c, "label": model.label(c), "coverage": round(float(coverage[c]), 5)}
               for c in range(mask.num_classes)]
    if encoding == "rle":
        runs = [{"class_id": c, "counts": _rle(mask.class_map, c)} for c in range(1, mask.num_classes) if coverage[c] > 0]
        encoded: dict[str, Any] = {"encoding": "rle", "order": "column-major", "runs": runs}
    else:
        _, png = cv2.imencode(".png", mask.class_map, PNG_FAST)
        encoded = {"encoding": "png", "data": base64.b64encode(png.tobytes()).decode("ascii")}
    return {"mask": {"width": width, "height": height, **encoded}, "classes": classes}


def _roi(crop: CropResult, width: int, height: int) -> dict:
    roi = crop.roi
    return {"x_center": round(roi.x_center / width, 5), "y_center": round(roi.y_center / height, 5),
            "width": round(roi.width / width, 5), "height": round(roi.height / height, 5),
            "rotation_degrees": round(float(np.degrees(roi.rotation)), 2)}


def chained_instances(crops: list[CropResult], model: VisionModel, detector: VisionModel,
                      width: int, height: int) -> list[dict]:
    """One instance per crop: the detection it came from, the crop, and the second model's
    answer on it (classes, or the landmarks when the model found its object there)."""
    instances = []
    for crop in crops:
        base = {"detection": {"label": detector.label(crop.class_id), "class_id": crop.class_id,
                              "score": round(crop.score, 5), **_box(*crop.box.tolist(), width, height)},
                "roi": _roi(crop, width, height)}
        if model.task == CLASSIFICATION:
            instances.append({**base, "classes": class_items(crop.result, model)})
        else:
            names = model.decoder.topology.names
            instances.extend({**landmark_instance(found, names, width, height), **base} for found in crop.result)
    return instances


def chain_result(prediction: Prediction, model: VisionModel, detector: VisionModel, detector_entry: ModelEntry) -> dict:
    """A chained model's part of the envelope: the detector version, the crops' count and
    their instances."""
    header = prediction.header
    return {"detector": model_reference(detector_entry), "crops": len(prediction.result),
            "instances": chained_instances(prediction.result, model, detector, header.width, header.height)}


def task_result(result: Any, model: VisionModel, header: ImageHeader, mask_encoding: str) -> dict:
    """A whole-picture result as the task's part of the envelope."""
    width, height = header.width, header.height
    if model.task == DETECTION:
        return {"detections": detection_items(result, model, width, height)}
    if model.task == CLASSIFICATION:
        return {"classes": class_items(result, model)}
    if model.task == KEYPOINTS:
        names = model.decoder.topology.names
        return {"instances": [landmark_instance(found, names, width, height) for found in result]}
    if model.task == SEGMENTATION:
        return mask_document(result, model, mask_encoding)
    raise ValueError(f"no document for task {model.task!r}")


def model_reference(entry: ModelEntry) -> dict:
    return {"name": entry.name, "version": entry.version, "generation": entry.generation}


def envelope(task: str, entry: ModelEntry, header: ImageHeader, result: dict, timings_ms: dict[str, float]) -> dict:
    return {
        "task": task,
        "model": model_reference(entry),
        "image": {"width": header.width, "height": header.height, "format": header.format},
        **result,
        "timing_ms": {stage: round(ms, 3) for stage, ms in timings_ms.items()},
    }
