"""``python -m service set-model``: the desired model in the local twin (no IoT Hub)."""
from __future__ import annotations

import argparse
import json
import sys

NAME = "set-model"
HELP = "set the desired model in the local twin ($TWINFER_STORE/twin/desired.json)"
DESCRIPTION = (
    "Write the desired model into the local twin's desired.json (the embedded default's stand-in for IoT Hub) "
    "and bump its $version; a running supervisor picks it up within a second. The document must pass the same "
    "checks as a twin patch."
)
EPILOG = (
    "example:\n"
    "  python -m service set-model --name ssd-oidv4 --version 2.0.0 \\\n"
    "      --url http://files.local/ssd-2.0.0.zip --sha256 <hex> --threshold 0.4"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", required=True, help="model version")
    parser.add_argument("--url", required=True, help="bundle URL (http or https, e.g. a Blob SAS URL)")
    parser.add_argument("--sha256", help="bundle SHA-256, hex")
    parser.add_argument("--md5", help="bundle MD5, hex or base64 (when no SHA-256 is known)")
    parser.add_argument("--size", type=int, help="bundle size in bytes")
    parser.add_argument("--threshold", type=float, help="inference score threshold override (0..1)")


def run(args: argparse.Namespace) -> int:
    from service.desired import DesiredError, parse_desired
    from service.settings import ServiceSettings
    from service.twin.local import DESIRED_FILE, read_json
    from workers.manifest import write_atomic

    path = ServiceSettings.from_env().store / "twin" / DESIRED_FILE
    desired = read_json(path)
    model = {"name": args.name, "version": args.version, "url": args.url}
    model.update({k: v for k, v in (("sha256", args.sha256), ("md5", args.md5), ("size", args.size)) if v is not None})
    desired["model"] = model
    if args.threshold is not None:
        desired["inference"] = {"score_threshold": args.threshold}
    desired["$version"] = int(desired.get("$version", 0)) + 1
    try:
        parse_desired(desired)
    except DesiredError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(desired, indent=2).encode())
    print(f"{path}: $version {desired['$version']}")
    return 0
