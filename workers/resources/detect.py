"""POST /detect[?model=<name>]: image in, labelled boxes out (``workers.inference`` does the work)."""
from __future__ import annotations

import falcon

from workers.inference import DetectOptions, InferenceHandler
from workers.resources.body import image_bytes


class DetectResource:
    def __init__(self, inference: InferenceHandler) -> None:
        self._inference = inference

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        options = DetectOptions.parse(req.get_param("threshold"), req.get_param("max_detections"))
        image = image_bytes(req, self._inference.max_body_bytes)  # before taking the model: a slow upload holds no swap
        with self._inference.serving(req, req.get_param("model")) as serving:  # a swap meanwhile waits for this request
            resp.media = self._inference.detect(serving, image, options)
        resp.set_header("X-Model-Version", serving.manifest.version)
