"""NVIDIA PyTriton: the bundled Triton server with one Python-bound model, ``detector``.

Input ``image``: BYTES [1] (the JPEG); output ``detections``: BYTES [1] (the JSON document).
Batching is off so every inference handles exactly one picture, as twinfer does; two model
instances (``bind`` with a list of 2 callables), each with its own ``InferenceSession``.
Clients use the v2 REST infer endpoint with the binary tensor extension, so the JPEG travels raw
after the JSON header (``Inference-Header-Content-Length``).

Usage: ``python pytriton_server.py HTTP_PORT GRPC_PORT METRICS_PORT [INSTANCES]``.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from common.detector import Detector  # noqa: E402
from pytriton.model_config import ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402


def make_infer_func(detector: Detector):
    def infer(requests):
        responses = []
        for request in requests:
            images = request["image"].reshape(-1)
            documents = [detector.detect_json(bytes(image)) for image in images]
            responses.append({"detections": np.array(documents, dtype=np.object_)})
        return responses

    return infer


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # Triton.serve() stops cleanly (server, stubs, shared memory) on SIGINT only


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    instances = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=metrics_port,
        exit_on_error=True,
    )
    workspace = os.environ.get("PEER_WORKSPACE") or None  # sockets and the model store
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(
            model_name="detector",
            infer_func=[make_infer_func(Detector()) for _ in range(instances)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="detections", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(batching=False),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
