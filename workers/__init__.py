"""twinfer's HTTP worker: the Falcon app that gunicorn runs (``workers.app``), its gunicorn
settings and worker classes, request limits, authentication and metrics.

It imports the core (``twinfer``), never ``service``.
"""

import twinfer  # noqa: F401  (first: twinfer/runtime_env.py, before any runtime loads)
