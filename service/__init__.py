"""twinfer supervisor: owns the model store and the manifest, starts and watches gunicorn.

It imports the core (``twinfer``: engines, decoders, manifest, store layout) to validate
models before it publishes them; ``workers`` never imports this package, and this package
imports ``workers`` only to check the workers' settings before gunicorn starts.
"""

import twinfer  # noqa: F401  (first: twinfer/runtime_env.py, for this process and its children)
