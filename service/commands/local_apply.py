"""Desired patches applied to the local twin (the embedded default's stand-in for IoT Hub).

``twin-patch --apply-local``, ``delta --apply-local``, ``apply-patch`` and ``set-model``
end here: the patch is merged into ``twin/desired.json`` as IoT Hub merges a desired patch
(null deletes a key), ``$version`` is bumped, and the result must pass the device's own
checks first (its parser and its rollback protection), so what the command accepts the
running supervisor acts on, and what the device would refuse exits non-zero unwritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

STORE_HELP = "the service's model store (default: $TWINFER_STORE, else ./var)"


class LocalApplyError(Exception):
    pass


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, metavar="DIR", help=STORE_HELP)


def service_store(store: Path | None) -> Path:
    """The store a service uses: it publishes a manifest on its first start. Anything else
    is a typo or the wrong directory, and writing a twin there would change nothing."""
    from twinfer.store_layout import MANIFEST_FILE, store_from_env

    path = store.resolve() if store else store_from_env()
    if not (path / MANIFEST_FILE).is_file():
        raise LocalApplyError(
            f"{path} is not the store of a twinfer service (no {MANIFEST_FILE}): point --store or TWINFER_STORE "
            f"at the store the service runs with (it writes one on its first start)")
    return path


def apply_patch(store: Path, patch: Mapping[str, Any]) -> tuple[Path, int]:
    """Merge ``patch`` into the local twin's desired document; (its path, the new $version)."""
    from service.twin.local import DESIRED_FILE, read_json
    from service.update.desired import DesiredError, merge_patch, parse_desired
    from service.update.rollback import RollbackGuard
    from twinfer.manifest import write_atomic
    from twinfer.store_layout import StoreLayout

    path = StoreLayout(store).twin / DESIRED_FILE
    try:
        current = read_json(path)
    except ValueError as exc:
        raise LocalApplyError(f"{path} is not valid JSON ({exc}): fix or delete it first") from None
    body = {key: value for key, value in patch.items() if not key.startswith("$")}
    desired = merge_patch(current, body)
    previous = current.get("$version", 0)
    desired["$version"] = (previous if isinstance(previous, int) else 0) + 1
    try:
        model = parse_desired(desired).model
    except DesiredError as exc:
        raise LocalApplyError(f"the device would refuse this document: {exc}") from None
    if model is not None:
        refusal = RollbackGuard(store).refusal(model.name, model.version, model.allow_downgrade,
                                               model.version_is_digest)
        if refusal is not None:
            raise LocalApplyError(f"the device would refuse this document: {refusal}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(desired, indent=2).encode())
    return path, desired["$version"]


def apply_and_say(store_arg: Path | None, patch: Mapping[str, Any]) -> int:
    """The command's exit code: 0 written, 2 refused (with the reason on stderr)."""
    try:
        path, version = apply_patch(service_store(store_arg), patch)
    except LocalApplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: $version {version}; a running service picks it up within a second "
          f"(`python -m service status` shows the outcome)")
    return 0
