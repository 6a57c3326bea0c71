"""``python -m service delta``: a patch from one bundle to the next, and the twin patch that offers it.

Devices that hold the base bundle download the patch instead of the whole bundle (see
``service.update.delta``); the desired patch also names the full bundle, which every other
device (and any device whose patching fails) downloads instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.commands import twin_patch

NAME = "delta"
LITTLE_GAIN = 0.5  # a patch over half the bundle: measured for retrains and format changes (87-89%)
HELP = "build a patch from an earlier bundle to a new one and print the desired-properties patch with model.delta"
DESCRIPTION = (
    "Build a zstd patch (the base bundle as a raw-content dictionary with long-distance matching, like zstd "
    "--patch-from) that turns BASE.zip, rolled out earlier as --base-version, into --bundle, check that it "
    "reproduces --bundle byte for byte, write it to --patch-out and print the twin patch: everything "
    "twin-patch prints for --bundle plus model.delta (base version and SHA-256, patch URL, SHA-256 and size). "
    "Upload both files: the full bundle stays the fallback. Patches stay small when bundles store the model "
    "uncompressed, as `python -m service bundle` writes them."
)
EPILOG = (
    "example:\n"
    "  python -m service delta --base ssd_1.0.0.zip --base-version 1.0.0 --bundle ssd_1.0.1.zip \\\n"
    "      --name ssd --version 1.0.1 --url '<full bundle SAS URL>' --patch-url '<patch SAS URL>' \\\n"
    "      --patch-out ssd_1.0.0-1.0.1.zst --sign keys/private.pem"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, required=True, metavar="BASE.zip", help="the bundle devices hold now")
    parser.add_argument("--base-version", required=True, metavar="V", help="the version BASE.zip was rolled out as")
    parser.add_argument("--patch-url", required=True, metavar="URL", help="where devices download the patch")
    parser.add_argument("--patch-out", type=Path, required=True, metavar="PATCH", help="the patch file to write")
    parser.add_argument("--level", type=int, default=19, metavar="L", help="zstd level (default 19)")
    twin_patch.configure(parser)


def build_delta(args: argparse.Namespace) -> dict:
    """Write the patch, check it round-trips, return the ``model.delta`` object."""
    import tempfile

    from service.update.delta import DeltaError, apply_patch, build_patch
    from service.update.verify import file_digests

    if args.bundle is None:
        raise twin_patch.PatchError("delta needs --bundle (the new bundle file), not --sha256")
    for path in (args.base, args.bundle):
        if not path.is_file():
            raise twin_patch.PatchError(f"{path} does not exist")
    try:
        info = build_patch(args.base, args.bundle, args.patch_out, level=args.level)
    except DeltaError as exc:
        raise twin_patch.PatchError(str(exc)) from None
    new_sha256 = file_digests(args.bundle)[0]
    with tempfile.TemporaryDirectory() as work:
        check = Path(work) / "check"
        try:
            apply_patch(args.base, args.patch_out, check, max_output_bytes=info.new_size)
        except DeltaError as exc:
            raise twin_patch.PatchError(f"the patch does not apply: {exc}") from None
        if file_digests(check)[0] != new_sha256:
            raise twin_patch.PatchError("the patch does not reproduce the bundle")
    share = info.patch_size / info.new_size
    print(f"patch {args.patch_out}: {info.patch_size} bytes, {100 * share:.1f}% of the "
          f"{info.new_size}-byte bundle, built in {info.seconds:.1f} s", file=sys.stderr)
    if share > LITTLE_GAIN:
        print(f"warning: the patch saves little ({100 * share:.0f}% of the bundle: a retrain or a format change?); "
              f"consider rolling out the full bundle alone", file=sys.stderr)
    return {
        "base_version": args.base_version,
        "base_sha256": file_digests(args.base)[0],
        "url": args.patch_url,
        "sha256": file_digests(args.patch_out)[0],
        "size": info.patch_size,
        "engine": info.engine,
    }


def run(args: argparse.Namespace) -> int:
    try:
        patch = twin_patch.build_patch(args, delta=build_delta(args))
    except twin_patch.PatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return twin_patch.emit_patch(args, patch)
