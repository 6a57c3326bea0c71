"""``python -m service keygen``: an Ed25519 key pair for signing model bundles."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "keygen"
HELP = "create an Ed25519 key pair for signing bundles (private.pem 0600, public.pem); print its key id"
DESCRIPTION = (
    "Write a new Ed25519 key pair into DIR: private.pem (PKCS#8, unencrypted, mode 0600: keep it off devices, "
    "in a vault or on the build machine) and public.pem (copy it to devices; TWINFER_TRUSTED_KEYS names the file "
    "or a directory of such files). Prints the key id (first 16 hex digits of the SHA-256 of the raw public key), "
    "which the device logs when a signature verifies. An existing key in DIR is never overwritten."
)
EPILOG = (
    "examples:\n"
    "  python -m service keygen --out keys/2026\n"
    "  python -m service bundle face.tflite --labels labels.txt --name face --version 1.0 \\\n"
    "      -o face_1.0.zip --sign keys/2026/private.pem"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for private.pem and public.pem (created if missing)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from service.update.signing import generate_key_pair

    try:
        files = generate_key_pair(args.out)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"key_id": files.key_id, "private": str(files.private.resolve()),
                          "public": str(files.public.resolve())}, indent=2))
        return 0
    print(f"key id   {files.key_id}")
    print(f"private  {files.private}  (mode 0600; never ship it to a device)")
    print(f"public   {files.public}  (copy to devices; TWINFER_TRUSTED_KEYS=<this file or its directory>)")
    return 0
