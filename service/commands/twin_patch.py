"""``python -m service twin-patch``: the desired-properties patch that rolls out a bundle."""
from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import zipfile
from pathlib import Path

from service.commands.local_apply import add_store_option, apply_and_say

NAME = "twin-patch"
HELP = "print the desired-properties patch (and the az command) that rolls out a bundle"
DESCRIPTION = (
    "Print the module twin's desired-properties patch for a bundle: the `model` object (name, version, url, "
    "sha256, md5, size, and signature with --signature or --sign; allow_downgrade with --allow-downgrade), "
    "`inference` and `download` (cap, windows, range size) when given and, with --reference, the reference design's "
    "FileName/DownloadUrl/ContentMD5 keys (ContentMD5 in base64, as Blob Storage gives it). The patch is checked "
    "with the device's own parser first. The JSON goes to stdout and a ready `az iot hub module-twin update` "
    "command to stderr; with --az only the command is printed, on stdout. With --apply-local the patch is "
    "applied to the local twin of the embedded default instead (as `apply-patch` does)."
)
EPILOG = (
    "examples:\n"
    "  python -m service twin-patch --url 'https://<account>.blob.core.windows.net/models/face_1.0.zip?<SAS>' \\\n"
    "      --bundle face_1.0.zip --name face --version 1.0 --threshold 0.6 --reference\n"
    "  python -m service twin-patch --url https://files.local/ssd-2.0.0.zip --sha256 <hex> --size 9254321 \\\n"
    "      --name ssd-oidv4 --version 2.0.0 --az --hub-name myhub --device-id cam-01\n"
    "  python -m service twin-patch --url <URL> --bundle face_1.0.zip --name face --version 1.0 \\\n"
    "      --sign keys/private.pem\n"
    "  python -m service twin-patch --url <URL> --bundle face_1.0.zip --name face --version 1.0 \\\n"
    "      --window 01:00-05:00 --apply-local   # the embedded default: no IoT Hub"
)
REFERENCE_KEYS = ("FileName", "DownloadUrl", "ContentMD5")


class PatchError(Exception):
    pass


def configure(parser: argparse.ArgumentParser, local: bool = False) -> None:
    """The options of a rollout; ``local`` (``set-model``): for the local twin, where a
    version already in the store needs neither the URL nor the digests."""
    parser.add_argument("--url", required=not local,
                        help="where devices download the bundle (http/https, e.g. a Blob SAS URL)"
                             + ("; not needed for a version already in the store" if local else ""))
    source = parser.add_mutually_exclusive_group(required=not local)
    source.add_argument("--bundle", type=Path, metavar="OUT.zip",
                        help="the bundle file: SHA-256, MD5 and size are read from it")
    source.add_argument("--sha256", metavar="H", help="the bundle's SHA-256 (hex), when the file is not at hand")
    parser.add_argument("--md5", metavar="M", help="with --sha256: the bundle's MD5 (hex or base64)")
    parser.add_argument("--size", type=int, metavar="N", help="with --sha256: the bundle's size in bytes")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", required=True, help="model version")
    signature = parser.add_mutually_exclusive_group()
    signature.add_argument("--signature", metavar="SIG",
                           help="model.signature: the bundle's base64 signature (as `bundle --sign` printed it)")
    signature.add_argument("--sign", type=Path, metavar="PRIVATE.pem",
                           help="compute model.signature over name, version and SHA-256 with this Ed25519 key")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="model.allow_downgrade: true, to roll back below the highest version the device ran")
    parser.add_argument("--threshold", type=float, metavar="T", help="inference.score_threshold (0..1)")
    parser.add_argument("--max-bps", type=int, metavar="B",
                        help="download.max_bytes_per_second (>= 1024, or 0 for no cap)")
    parser.add_argument("--window", action="append", metavar="HH:MM-HH:MM[@BPS]",
                        help="download.windows: download only in this window of the device's local time, optionally "
                             "capped at BPS bytes/s (repeat for several; --no-windows for none)")
    parser.add_argument("--no-windows", action="store_true",
                        help="download.windows: [] (download any time, whatever the device's configured windows)")
    parser.add_argument("--range-bytes", type=int, metavar="N",
                        help="download.range_bytes: fetch in ranges of N bytes (>= 65536), 0 for one request")
    parser.add_argument("--urgent", action="store_true", help="model.urgent: true, download outside the windows")
    parser.add_argument("--compressed", type=Path, metavar="OUT.zip.zst",
                        help="--url serves this zstd frame of --bundle (`bundle --compressed`): model.compression "
                             "and model.size (the frame's) are set from it")
    parser.add_argument("--reference", action="store_true",
                        help="add the reference design's FileName/DownloadUrl/ContentMD5 keys (needs the MD5)")
    add_store_option(parser)
    if local:
        return
    parser.add_argument("--az", action="store_true", help="print only the az command, on stdout")
    parser.add_argument("--apply-local", action="store_true",
                        help="apply the patch to the local twin ($TWINFER_STORE/twin/desired.json) instead of printing")
    parser.add_argument("--hub-name", default="<HUB>", help="IoT Hub name for the az command (default: <HUB>)")
    parser.add_argument("--device-id", default="<DEVICE>", help="device id for the az command (default: <DEVICE>)")
    parser.add_argument("--module-id", default="twinfer", help="module id for the az command (default: twinfer)")


def _digests(args: argparse.Namespace) -> tuple[str, str | None, int | None]:
    """(sha256 hex, md5 hex or None, size or None)."""
    from service.update.verify import file_digests, normalize_md5

    if args.bundle is not None:
        if args.md5 is not None or args.size is not None:
            raise PatchError("--md5 and --size go with --sha256; with --bundle they are read from the file")
        if not args.bundle.is_file():
            raise PatchError(f"bundle {args.bundle} does not exist")
        if not zipfile.is_zipfile(args.bundle):
            raise PatchError(f"{args.bundle} is not a ZIP file (build one with `python -m service bundle`)")
        sha256, md5 = file_digests(args.bundle)
        return sha256, md5, args.bundle.stat().st_size
    md5 = None
    if args.md5 is not None:
        try:
            md5 = normalize_md5(args.md5)
        except ValueError as exc:
            raise PatchError(str(exc)) from None
    return args.sha256.strip().lower(), md5, args.size


def _signature(args: argparse.Namespace, sha256: str) -> str | None:
    from service.update import signing

    if args.sign is not None:
        try:
            private_key = signing.load_private_key(args.sign)
            return signing.sign(private_key, args.name, args.version, sha256)
        except ValueError as exc:  # KeyFileError, or a malformed --sha256
            raise PatchError(str(exc)) from None
    if args.signature is not None:
        try:
            signing.decode_signature(args.signature)
        except signing.SignatureError as exc:
            raise PatchError(f"--signature: {exc}") from None
        return args.signature.strip()
    return None


def _compressed(args: argparse.Namespace, sha256: str) -> dict:
    """``compression`` and the frame's ``size``, after checking the frame holds the bundle."""
    import tempfile

    from service.update.delta import DeltaError, decompress_bundle
    from service.update.verify import file_digests

    if args.bundle is None or not args.compressed.is_file():
        raise PatchError("--compressed needs --bundle and an existing OUT.zip.zst (bundle --compressed)")
    with tempfile.TemporaryDirectory() as work:
        check = Path(work) / "bundle"
        try:
            decompress_bundle(args.compressed, check, max_output_bytes=args.bundle.stat().st_size)
        except DeltaError as exc:
            raise PatchError(f"{args.compressed} is not a zstd frame of {args.bundle}: {exc}") from None
        if file_digests(check)[0] != sha256:
            raise PatchError(f"{args.compressed} does not decompress to {args.bundle}")
    return {"compression": "zstd", "size": args.compressed.stat().st_size}


def _download_settings(args: argparse.Namespace) -> dict:
    if args.window and args.no_windows:
        raise PatchError("--window and --no-windows exclude each other")
    download: dict = {}
    if args.max_bps is not None:
        download["max_bytes_per_second"] = args.max_bps
    if args.window or args.no_windows:
        download["windows"] = list(args.window or [])
    if args.range_bytes is not None:
        download["range_bytes"] = args.range_bytes
    return download


def build_patch(args: argparse.Namespace, delta: dict | None = None) -> dict:
    """The desired patch for the bundle (``delta``: a ``model.delta`` object to add)."""
    from service.update.desired import MODEL_KEYS, DesiredError, parse_desired

    sha256, md5, size = _digests(args)
    model = {"name": args.name, "version": args.version, "sha256": sha256}
    if args.url is not None:
        model["url"] = args.url
    if md5 is not None:
        model["md5"] = md5
    if size is not None:
        model["size"] = size
    signature = _signature(args, sha256)
    if signature is not None:
        model["signature"] = signature
    if args.allow_downgrade:
        model["allow_downgrade"] = True
    if args.urgent:
        model["urgent"] = True
    if args.compressed is not None:
        model.update(_compressed(args, sha256))
    if delta is not None:
        model["delta"] = delta
    # Null for every key this bundle does not use: IoT Hub (and the local twin) merge the patch
    # into the model object, and a delta, compression or permission of the last rollout must
    # not ride along with this one.
    model.update({key: None for key in MODEL_KEYS if key not in model})
    patch: dict = {"model": model}
    if args.threshold is not None:
        patch["inference"] = {"score_threshold": args.threshold}
    download = _download_settings(args)
    if download:
        patch["download"] = download
    if args.reference:
        if md5 is None:
            raise PatchError("--reference needs the bundle's MD5 (the reference design checks ContentMD5): "
                             "give --bundle or --md5")
        patch["FileName"] = f"{args.name}_{args.version}.zip"
        patch["DownloadUrl"] = args.url
        patch["ContentMD5"] = base64.b64encode(bytes.fromhex(md5)).decode()
    try:
        parse_desired(patch)
    except DesiredError as exc:
        raise PatchError(f"the device would refuse this patch: {exc}") from None
    if args.reference:
        _warn_if_reference_names_differ(patch)
    return patch


def _warn_if_reference_names_differ(patch: dict) -> None:
    """``model`` wins on twinfer; a device reading only the reference keys names the model from FileName."""
    from service.update.desired import DesiredError, parse_desired

    try:
        seen = parse_desired({key: patch[key] for key in REFERENCE_KEYS}).model
    except DesiredError as exc:
        print(f"warning: the reference keys alone do not parse: {exc}", file=sys.stderr)
        return
    if seen is not None and (seen.name, seen.version) != (patch["model"]["name"], patch["model"]["version"]):
        print(f"warning: from FileName alone a device would name this {seen.name} {seen.version} "
              f"(reference-design versions are numeric, e.g. 1.0)", file=sys.stderr)


def _word(value: str) -> str:
    """Quoted for the shell, except the <PLACEHOLDER>s the operator is meant to replace."""
    return value if value.startswith("<") and value.endswith(">") and value.isupper() else shlex.quote(value)


def az_command(patch: dict, hub: str, device: str, module: str) -> str:
    desired = json.dumps(patch, separators=(",", ":"))
    return (f"az iot hub module-twin update --hub-name {_word(hub)} --device-id {_word(device)} "
            f"--module-id {_word(module)} --desired {shlex.quote(desired)}")


def emit_patch(args: argparse.Namespace, patch: dict) -> int:
    """Applied to the local twin (``--apply-local``), or printed: the JSON on stdout and the
    az command on stderr, or (``--az``) only the command. Returns the exit code."""
    if args.apply_local:
        return apply_and_say(args.store, patch)
    command = az_command(patch, args.hub_name, args.device_id, args.module_id)
    if args.az:
        print(command)
    else:
        print(json.dumps(patch, indent=2))
        print(command, file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        patch = build_patch(args)
    except PatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return emit_patch(args, patch)
