"""gunicorn settings for the twinfer worker pool: ``workers/gunicorn_config.py``, for
``gunicorn -c gunicorn.conf.py`` run from the project root (the supervisor loads the module
itself: ``-c python:workers.gunicorn_config``)."""
from workers.gunicorn_config import *  # noqa: F401,F403  (settings and server hooks)
