"""``python -m service [command]``: the supervisor and the operator commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from service.settings import ServiceSettings


def prepare_metrics_dir(settings: ServiceSettings) -> None:
    """Wipe the prometheus-client multiprocess directory (a previous run's files would be
    summed in) and point this process at it, before prometheus_client is first imported."""
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)


def _run(args: argparse.Namespace) -> int:
    settings = ServiceSettings.from_env()
    prepare_metrics_dir(settings)
    from service.supervisor import Supervisor  # imports prometheus_client: after the env is set

    return Supervisor(settings).run()


def _validate(args: argparse.Namespace) -> int:
    from service.staging import validation_verdict

    code, verdict = validation_verdict(args.directory, args.name, args.version)
    print(verdict)
    return code


def _set_model(args: argparse.Namespace) -> int:
    """Write the local twin's desired model (the embedded default's stand-in for IoT Hub)."""
    from service.desired import DesiredError, parse_desired
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="twinfer edge inference supervisor")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="prepare the model store, serve, follow the twin (the default command)")
    run.set_defaults(handler=_run)
    validate = commands.add_parser("validate", help="load a model directory, detect its decoder, warm it up; print JSON")
    validate.add_argument("directory", type=Path)
    validate.add_argument("--name", default="candidate")
    validate.add_argument("--version", default="0")
    validate.set_defaults(handler=_validate)
    set_model = commands.add_parser(
        "set-model", help="set the desired model in the local twin ($TWINFER_STORE/twin/desired.json)"
    )
    set_model.add_argument("--name", required=True)
    set_model.add_argument("--version", required=True)
    set_model.add_argument("--url", required=True, help="bundle URL (http or https, e.g. a Blob SAS URL)")
    set_model.add_argument("--sha256", help="bundle SHA-256, hex")
    set_model.add_argument("--md5", help="bundle MD5, hex or base64 (when no SHA-256 is known)")
    set_model.add_argument("--size", type=int, help="bundle size in bytes")
    set_model.add_argument("--threshold", type=float, help="inference score threshold override (0..1)")
    set_model.set_defaults(handler=_set_model)
    parser.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
