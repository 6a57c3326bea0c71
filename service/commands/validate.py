"""``python -m service validate DIR``: what the updater runs in a child process."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "validate"
HELP = "load a model directory, detect its decoder, warm it up; print JSON"
DESCRIPTION = (
    "Load an unpacked model directory with the workers' loader, detect (or read) its decoder, run a warm-up "
    "inference and prepare the host artifact. Prints one JSON line: the verdict, or {\"error\": ...} with exit "
    "code 1. The supervisor runs this in a child process for every downloaded model."
)
EPILOG = "example:\n  python -m service validate models/default --name demo --version 1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path,
                        help="directory with one .onnx/.tflite, labels .txt, optional twinfer.json")
    parser.add_argument("--name", default="candidate", help="model name (default: candidate)")
    parser.add_argument("--version", default="0", help="model version (default: 0)")


def run(args: argparse.Namespace) -> int:
    from service.update.validation import validation_verdict

    code, verdict = validation_verdict(args.directory, args.name, args.version)
    print(verdict)
    return code
