"""BentoML 1.4: one service, 2 workers, ``POST /detect`` taking the raw image bytes as the API's
root input (a positional-only ``bytes`` parameter: the request body itself, any image content
type) and returning the detections dict as JSON. Each worker builds its ``InferenceSession``
once, in ``__init__``; sync APIs run one at a time per worker (``threads`` defaults to 1).

run.py starts it with ``bentoml serve servers.bentoml_service:PeerDetector --host 127.0.0.1``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bentoml  # noqa: E402
from common.detector import Detector  # noqa: E402

WORKERS = int(os.environ.get("PEER_WORKERS", "2"))


@bentoml.service(workers=WORKERS, traffic={"timeout": 60})
class PeerDetector:
    def __init__(self) -> None:
        self.detector = Detector()

    @bentoml.api
    def detect(self, image: bytes, /) -> dict:
        return self.detector.detect(image)
