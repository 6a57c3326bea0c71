"""twinfer supervisor: owns the model store and the manifest, starts and watches gunicorn.

It may import ``workers`` (engines, decoders, manifest) to validate models before it
publishes them; ``workers`` never imports this package.
"""

import workers  # noqa: F401  (first: workers/runtime_env.py, for this process and its children)
