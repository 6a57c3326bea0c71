"""twinfer worker side: the Falcon app that gunicorn runs, and the inference core.

Nothing in this package imports ``service``: the supervisor depends on the workers'
engines, decoders and manifest to validate models, never the other way round.
"""

import workers.runtime_env  # noqa: F401  (first: no runtime initialises before it, e.g. no telemetry)

__version__ = "0.1.0"  # the project's version (pyproject.toml); /v2 server metadata reports it
