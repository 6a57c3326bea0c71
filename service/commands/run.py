"""``python -m service run`` (also the default): the supervisor."""
from __future__ import annotations

import argparse
import logging
import os
import shutil

log = logging.getLogger("twinfer.supervisor")
NAME = "run"
HELP = "prepare the model store, serve, follow the twin (the default command)"
DESCRIPTION = (
    "Prepare the model store ($TWINFER_STORE), stage the bundled model on an empty store, start the gunicorn "
    "worker pool and follow the module twin. Configuration comes from the environment (see README)."
)
EPILOG = (
    "examples:\n"
    "  python -m service                      # what `make run` and the container run\n"
    "  TWINFER_STORE=/tmp/store TWINFER_WORKERS=2 TWINFER_HTTP_PORT=8081 python -m service run"
)


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def prepare_metrics_dir(settings) -> None:
    """Wipe the prometheus-client multiprocess directory (a previous run's files would be
    summed in) and point this process at it, before prometheus_client is first imported."""
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)


def run(args: argparse.Namespace) -> int:
    from service.settings import ServiceSettings
    from service.store_check import EXIT_STORE_UNWRITABLE, report_store_problem, store_problem

    settings = ServiceSettings.from_env()
    problem = store_problem(settings.store)
    if problem is not None:
        log.error(problem)
        report_store_problem(settings.store, problem, os.environ)
        return EXIT_STORE_UNWRITABLE
    prepare_metrics_dir(settings)
    from service.supervisor import Supervisor  # imports prometheus_client: after the env is set

    return Supervisor(settings).run()
