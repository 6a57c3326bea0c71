"""Before anything else: can this process write its model store?

The usual first deployment mistake is a bind mount whose host directory Docker created
(owned by root) while the module runs as uid 10001: without this check the supervisor
dies on a ``PermissionError`` traceback and the restart policy starts it again, forever,
with nothing an operator can act on. Instead it says in one line what is wrong and how to
fix it, reports it on the twin when the twin is IoT Hub (the local twin lives in the very
store that cannot be written), and exits with ``EXIT_STORE_UNWRITABLE``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

from service.update import failures
from service.update.status import error_record

log = logging.getLogger("twinfer.supervisor")
EXIT_STORE_UNWRITABLE = 78  # EX_CONFIG: the configuration (here, the mount) is wrong


def store_problem(store: Path) -> str | None:
    """Why ``store`` (and each directory already in it) cannot be written, or None."""
    directory = store
    try:
        store.mkdir(parents=True, exist_ok=True)
        for directory in [store, *sorted(p for p in store.iterdir() if p.is_dir())]:
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".twinfer-write-check-")
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        uid = os.getuid()
        return (f"the model store {store} is not writable by this process (uid {uid}): {directory}: "
                f"{exc.strerror or exc}. If it is a bind mount, give the host directory to that user "
                f"(`sudo chown -R {uid} <host directory>`; Docker creates a missing one owned by root), "
                f"or set TWINFER_STORE to a writable directory")
    return None


def report_store_problem(store: Path, message: str, env: Mapping[str, str]) -> None:
    """Best effort: on IoT Hub / IoT Edge, put the reason on the twin before exiting."""
    from service.twin.base import TwinError
    from service.twin.factory import create_twin_source
    from service.twin.local import LocalTwin

    try:
        twin = create_twin_source(store, env)
    except (TwinError, OSError) as exc:
        log.warning("could not report the unwritable store on the twin: %s", exc)
        return
    if isinstance(twin, LocalTwin):
        return
    try:
        twin.report({"model": {"state": "failed", "last_error": error_record(failures.STORE_NOT_WRITABLE, message)}})
    except TwinError as exc:
        log.warning("could not report the unwritable store on the twin: %s", exc)
    finally:
        twin.close()
