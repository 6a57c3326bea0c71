"""``python -m service set-model``: roll out a model on the local twin (no IoT Hub).

The same options as ``twin-patch`` (downgrade permission, compression, delta-free
windows, rate cap, urgent, signature, ``--pool`` for ``models.<name>``, ``--remove``),
applied to the local twin by ``service.commands.local_apply``; a version already in the
store needs only its name and version (the runbook's rollback), its SHA-256 read from the
store's record of the bundle.
"""
from __future__ import annotations

import argparse
import sys

from service.commands import twin_patch
from service.commands.local_apply import LocalApplyError, apply_and_say, service_store

NAME = "set-model"
HELP = "set the desired model in the local twin ($TWINFER_STORE/twin/desired.json)"
DESCRIPTION = (
    "Write the desired model into the local twin's desired.json (the embedded default's stand-in for IoT Hub) "
    "and bump its $version; a running supervisor picks it up within a second. Takes every option of "
    "twin-patch; for a version already in the store --url and --bundle/--sha256 may be left out. With --pool "
    "the model goes to models.<--name>, served beside the default model (`model`); --remove NAME takes a "
    "model of the pool out (models.NAME: null), alone or with a rollout. Exits 2, "
    "writing nothing, for what the device would refuse (a malformed document, a downgrade without "
    "--allow-downgrade, a name both the default model and a key of models), for a removal that would change "
    "nothing (a model the pool does not hold, the default model) and for a directory that is not a service's "
    "store."
)
EPILOG = (
    "examples:\n"
    "  python -m service set-model --name ssd-oidv4 --version 2.0.0 \\\n"
    "      --url http://files.local/ssd-2.0.0.zip --bundle ssd-2.0.0.zip --threshold 0.4\n"
    "  python -m service set-model --name ssd-oidv4 --version 1.0.0 --allow-downgrade  # back to a staged version\n"
    "  python -m service set-model --name plates --version 2.1 --pool \\\n"
    "      --url http://files.local/plates-2.1.zip --bundle plates-2.1.zip   # models.plates, beside the default\n"
    "  python -m service set-model --remove plates   # models.plates: null, out of the pool"
)


def configure(parser: argparse.ArgumentParser) -> None:
    twin_patch.configure(parser, local=True)


def _from_store(args: argparse.Namespace) -> None:
    """No URL: the version must be in the store (the device will not download it); without
    digests, the SHA-256 and MD5 it recorded for that version's bundle are used."""
    from service.repository import ModelRepository

    store = service_store(args.store)
    repo = ModelRepository(store)
    if not repo.has(args.name, args.version):
        raise LocalApplyError(f"{args.name} {args.version} is not in {store}: give --url and --bundle (or --sha256)")
    if args.bundle is not None or args.sha256 is not None:
        return
    record = repo.bundle_record(args.name, args.version)
    if not isinstance(record.get("sha256"), str):
        raise LocalApplyError(f"{args.name} {args.version} is in the store but has no record of its bundle: "
                              f"give --bundle or --sha256")
    args.sha256, args.md5 = record["sha256"], record.get("md5")


def run(args: argparse.Namespace) -> int:
    try:
        if not twin_patch.is_rollout(args) or args.variant:  # only removals, or variants: no bundle to find
            pass
        elif args.url is None:
            _from_store(args)
        elif args.bundle is None and args.sha256 is None:
            raise LocalApplyError("with --url give --bundle or --sha256: an unverified download is never staged")
        patch = twin_patch.build_patch(args)
    except (LocalApplyError, twin_patch.PatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return apply_and_say(args.store, patch)
