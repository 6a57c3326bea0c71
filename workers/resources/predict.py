"""POST /predict[?model=<name>]: image in, the model's task's answer out (every task;
``workers.inference`` does the work, ``workers.predictions`` writes the documents)."""
from __future__ import annotations

import falcon

from workers.inference import InferenceHandler, PredictQuery
from workers.resources.body import image_bytes


class PredictResource:
    def __init__(self, inference: InferenceHandler) -> None:
        self._inference = inference

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = PredictQuery.parse(req)
        image = image_bytes(req, self._inference.max_body_bytes)  # before taking the model: a slow upload holds no swap
        with self._inference.serving_chain(req, req.get_param("model")) as (serving, detector):
            resp.media = self._inference.predict(serving, detector, image, query)
        resp.set_header("X-Model-Version", serving.manifest.version)
