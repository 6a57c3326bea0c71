"""The reference design: a Flask app, POST /detect with the raw image, JSON detections.

Two ways to run it (``ops/bench/peers/run.py`` picks):

* as written (``PEER_SESSION_PER_REQUEST=1``, ``python reference_flask.py``): Flask's built-in
  development server, one process, ``threaded=False``, and a NEW ``InferenceSession`` built for
  every request (model file read, graph optimised, kernels prepared, then one run) - the floor;
* done right (``gunicorn -w 2 -k sync reference_flask:app``): the same app under gunicorn sync
  workers, the session built once per worker when the worker imports this module.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ops/bench/peers: the shared ``common``

from common.detector import Detector  # noqa: E402
from flask import Flask, Response, request  # noqa: E402

PER_REQUEST_SESSION = os.environ.get("PEER_SESSION_PER_REQUEST") == "1"

app = Flask(__name__)
WORKER = str(os.getpid())  # the module is imported in each gunicorn worker (no preload)
detector = Detector(per_request_session=PER_REQUEST_SESSION)


@app.get("/health")
def health() -> Response:
    return Response(b'{"status":"ok"}', mimetype="application/json")


@app.post("/detect")
def detect() -> Response:
    data = request.get_data()
    try:
        body = detector.detect_json(data)
    except ValueError as exc:
        return Response(f'{{"error":"{exc}"}}', status=400, mimetype="application/json")
    # Which worker answered, as twinfer says it in X-Twinfer-Worker: run.py counts both.
    return Response(body, mimetype="application/json", headers={"X-Worker": WORKER})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PEER_PORT"]), threaded=False, debug=False)
