"""KServe v2 / Open Inference Protocol over HTTP (``/v2/...``), beside ``/detect``.

Two ways into one model: its raw tensors (any client of the protocol, e.g.
``tritonclient.http``), or one encoded image as the BYTES input ``image``, which runs the
same pipeline as ``POST /detect`` and answers its JSON document as the BYTES output
``detections``. ``codec`` turns request bodies into arrays and outputs into response
bodies (JSON, and Triton's binary tensor data extension); ``resources`` holds the Falcon
resources that ``workers.app`` routes.
"""

SERVER_NAME = "twinfer"
EXTENSIONS = ("binary_tensor_data", "model_repository")  # the latter: POST /v2/repository/index only
IMAGE_INPUT = "image"
DETECTIONS_OUTPUT = "detections"
