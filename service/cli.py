"""``twinfer [command]`` (installed) or ``python -m service [command]``: the supervisor and
the operator commands.

A thin parser: each command's logic lives in its own module under ``service.commands``.
Without a command, ``run`` (the supervisor) starts, as in the container's CMD.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.commands import apply_patch, bundle, delta, keygen, run, set_model, status, twin_patch, validate

COMMANDS = (run, validate, set_model, apply_patch, bundle, twin_patch, delta, status, keygen)

# Kept importable from here (the metrics directory is prepared by the ``run`` command).
prepare_metrics_dir = run.prepare_metrics_dir


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the one-paragraph descriptions; keeps the line breaks of the examples."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def program_name() -> str:
    """How the user started us: the installed ``twinfer`` script or ``python -m service``."""
    return "twinfer" if Path(sys.argv[0]).name == "twinfer" else "python -m service"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="twinfer: edge inference supervisor and operator commands. Without a command: run.",
        epilog=f"`{program_name()} COMMAND --help` shows each command's options and examples.",
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for module in COMMANDS:
        sub = commands.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.DESCRIPTION,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=_HelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(handler=module.run)
    parser.set_defaults(handler=run.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
