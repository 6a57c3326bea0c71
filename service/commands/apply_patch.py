"""``python -m service apply-patch``: a saved desired patch applied to the local twin."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.commands.local_apply import add_store_option, apply_and_say

NAME = "apply-patch"
HELP = "apply a desired-properties patch (twin-patch or delta output) to the local twin"
DESCRIPTION = (
    "Merge a desired-properties patch, as `twin-patch` or `delta` print it (or any JSON object IoT Hub would "
    "take as a desired patch; null deletes a key, so `{\"models\": {\"NAME\": null}}` takes a model out of the "
    "pool), into the local twin's desired.json and bump its $version. The result must pass the device's own "
    "checks, for `model` and every `models.<name>`: exits 2, writing nothing, for what the device would refuse "
    "(a malformed document, a downgrade without allow_downgrade, a name both model and a key of models), for "
    "a removal that would change nothing (a model the pool does not hold, the default model) and for a "
    "directory that is not a service's store."
)
EPILOG = (
    "examples:\n"
    "  python -m service twin-patch --url <URL> --bundle face_1.0.zip --name face --version 1.0 > patch.json\n"
    "  python -m service apply-patch patch.json\n"
    "  python -m service delta ... | python -m service apply-patch -\n"
    "  echo '{\"models\": {\"plates\": null}}' | python -m service apply-patch -   # take plates out of the pool"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patch", metavar="PATCH.json", help="the patch file, or - for standard input")
    add_store_option(parser)


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.patch == "-" else Path(args.patch).read_text(encoding="utf-8")
        patch = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the patch {args.patch}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(patch, dict):
        print("error: a desired patch is a JSON object", file=sys.stderr)
        return 2
    return apply_and_say(args.store, patch)
