"""``python -m service [command]``: the supervisor and the operator commands."""
from __future__ import annotations

import argparse
import logging
import sys

from service.settings import ServiceSettings
from service.supervisor import Supervisor


def _run(args: argparse.Namespace) -> int:
    return Supervisor(ServiceSettings.from_env()).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="twinfer edge inference supervisor")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="prepare the model store and serve (the default command)")
    run.set_defaults(handler=_run)
    parser.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
