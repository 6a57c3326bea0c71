"""The process environment the inference runtimes read when they initialise.

Imported by ``workers/__init__.py``, so it runs before any module of this project can
import ONNX Runtime, in every process: the supervisor (``service`` imports ``workers``),
its validation and preparation children, the gunicorn master (``gunicorn.conf.py``) and
its workers. Children inherit it through ``os.environ``; the image sets the same in its
``ENV`` as well, for a process that imports a runtime some other way.

ONNX Runtime's official builds send usage events to Microsoft and keep a device id under
``$HOME/.cache``; ``ORT_DISABLE_TELEMETRY=1`` read when it initialises prevents the
uploader, the events and the id for the whole process. An edge module on a metered link
must not phone home, so this is forced, not a default: an operator cannot turn it on.
"""
from __future__ import annotations

import os

RUNTIME_ENVIRONMENT = {"ORT_DISABLE_TELEMETRY": "1"}

os.environ.update(RUNTIME_ENVIRONMENT)  # overrides an inherited value
