"""Desired patches applied to the local twin (the embedded default's stand-in for IoT Hub).

``twin-patch --apply-local``, ``delta --apply-local``, ``apply-patch`` and ``set-model``
end here: the patch is merged into ``twin/desired.json`` as IoT Hub merges a desired patch
(null deletes a key), ``$version`` is bumped, and the result must pass the device's own
checks first (its parser, for the default ``model`` and every ``models.<name>``, and its
rollback protection per model), so what the command accepts the running supervisor acts
on, and what the device would refuse exits non-zero unwritten. A removal
(``models.<name>: null``) must name a model of the pool other than the default one: one
that would change nothing is a mistake, refused too.
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


def desired_models(document: Mapping[str, Any]) -> list:
    """Every model a desired document names, parsed as the device parses it: the default
    model's part (``model``, or the reference keys; None without one) first, then each
    ``models.<name>`` (``service.update.pool_desired``). Raises ``DesiredError``."""
    from service.update.desired import DesiredError, parse_desired
    from service.update.pool_desired import lane_documents

    default, lanes = lane_documents(document, set())
    models = [parse_desired(default).model]  # a malformed ``models`` comes back as its $error
    for name, lane in sorted(lanes.items()):
        try:
            models.append(parse_desired(lane).model)
        except DesiredError as exc:
            raise DesiredError(f"models.{name}: {exc}") from None
    return models


def _pool_changes(store: Path, current: Mapping[str, Any], patch: Mapping[str, Any],
                  default: str | None) -> None:
    """Refuse what the pool would not act on: a removal of a model it does not hold or of
    the default model, a ``models.<name>`` named like the bundled default model."""
    from service.twin.local import DESIRED_FILE
    from twinfer.manifest import read_manifest

    changes = patch.get("models")
    if not isinstance(changes, Mapping):
        return
    try:
        manifest = read_manifest(store)
    except (OSError, ValueError, TypeError, KeyError):  # the service rewrites it at start
        manifest = None
    served = set(manifest.models) if manifest else set()
    bundled = manifest.default if manifest else None
    held = current.get("models") if isinstance(current.get("models"), Mapping) else {}
    default = default or bundled  # no model in the twin: the bundled one stays the default
    for name, value in changes.items():
        if value is None:
            if name == default and name not in held:
                raise LocalApplyError(f"{name} is the default model: it is not removed but replaced "
                                      f"(roll out another model as model, e.g. set-model --name OTHER)")
            if name not in held and name not in served:
                raise LocalApplyError(f"{name} is not a model of the pool (not in models of {DESIRED_FILE} "
                                      f"nor in the manifest): nothing to remove")
        elif name == default:
            raise LocalApplyError(f"{name} is the default model: roll it out as model (without --pool)")


def apply_patch(store: Path, patch: Mapping[str, Any]) -> tuple[Path, int]:
    """Merge ``patch`` into the local twin's desired document; (its path, the new $version)."""
    from service.twin.local import DESIRED_FILE, read_json
    from service.update.desired import DesiredError, merge_patch
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
        models = desired_models(desired)
    except DesiredError as exc:
        raise LocalApplyError(f"the device would refuse this document: {exc}") from None
    _pool_changes(store, current, body, models[0].name if models[0] is not None else None)
    guard = RollbackGuard(store)
    for model in models:
        if model is None:
            continue
        refusal = guard.refusal(model.name, model.version, model.allow_downgrade, model.version_is_digest)
        if refusal is not None:
            prefix = "" if model is models[0] else f"models.{model.name}: "
            raise LocalApplyError(f"the device would refuse this document: {prefix}{refusal}")
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
