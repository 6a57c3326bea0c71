"""twinfer's core, shared by both processes: model files and runtimes (``engines``),
output decoders (``decoders``), the pipeline from picture to detections (``imaging``,
``spec``, ``loader``, ``pipeline``), the model store's layout and manifest, the settings
table, and the process set-up every interpreter needs first (``runtime_env``,
``allocator``, ``native_stderr``).

Dependencies point one way: ``service`` (the supervisor) and ``workers`` (the HTTP
worker) import this package; it imports neither.
"""

import twinfer.runtime_env  # noqa: F401  (first: no runtime initialises before it, e.g. no telemetry)

__version__ = "0.1.0"  # the project's version (pyproject.toml); /v2 server metadata reports it
