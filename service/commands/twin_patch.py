"""``python -m service twin-patch``: the desired-properties patch that rolls out a bundle."""
from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import zipfile
from pathlib import Path

from service.commands import variant_options
from service.commands.local_apply import add_store_option, apply_and_say, desired_models

NAME = "twin-patch"
HELP = "print the desired-properties patch (and the az command) that rolls out a bundle"
DESCRIPTION = (
    "Print the module twin's desired-properties patch for a bundle: the `model` object (name, version, url, "
    "sha256, md5, size, and signature with --signature or --sign; allow_downgrade with --allow-downgrade), "
    "`inference` and `download` (cap, windows, range size) when given and, with --reference, the reference design's "
    "FileName/DownloadUrl/ContentMD5 keys (ContentMD5 in base64, as Blob Storage gives it). The patch is checked "
    "with the device's own parser first. The JSON goes to stdout and a ready `az iot hub module-twin update` "
    "command to stderr; with --az only the command is printed, on stdout. With --apply-local the patch is "
    "applied to the local twin of the embedded default instead (as `apply-patch` does). With --pool the bundle "
    "goes to `models.<--name>` instead of `model`: a model served beside the default one (requests name it), "
    "its threshold in `models.<name>.inference`; `model` keeps naming the default model. --remove NAME (repeat "
    "for several) adds `\"models\": {\"NAME\": null}`, which takes that model out of the pool; alone it needs no "
    "bundle options. --variant NAME BUNDLE URL (repeat, in order of preference) offers the version as several "
    "bundles in model.variants (e.g. int8 and fp32, from `bundle --quantize`): each device downloads only the first "
    "its CPU runs well and verifies it; --url/--bundle then become optional (beside the variants they are the "
    "last resort), --as-variant NAME makes the --bundle/--url pair (with its delta) a variant itself, "
    "--pin-variant NAME sets model.variant, --drop-variant NAME removes one an earlier patch offered."
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
    "      --window 01:00-05:00 --apply-local   # the embedded default: no IoT Hub\n"
    "  python -m service twin-patch --url <URL> --bundle plates_2.1.zip --name plates --version 2.1 \\\n"
    "      --threshold 0.5 --pool   # models.plates: served beside the default model\n"
    "  python -m service twin-patch --remove plates   # {\"models\": {\"plates\": null}}: out of the pool\n"
    "  python -m service twin-patch --name ssd --version 2.0 --variant int8 ssd_2.0_int8.zip '<int8 URL>' \\\n"
    "      --variant fp32 ssd_2.0.zip '<fp32 URL>'   # model.variants: int8 where the CPU has VNNI/dot product"
)
REFERENCE_KEYS = ("FileName", "DownloadUrl", "ContentMD5")


class PatchError(Exception):
    pass


ONLY_REMOVING = "; not needed when only removing models (--remove)"


def configure(parser: argparse.ArgumentParser, local: bool = False) -> None:
    """The options of a rollout; ``local`` (``set-model``): for the local twin, where a
    version already in the store needs neither the URL nor the digests. --url, the bundle
    and --name/--version are required unless the patch only removes models (``--remove``):
    ``build_patch`` checks that, as argparse cannot."""
    parser.add_argument("--url",
                        help="where devices download the bundle (http/https, e.g. a Blob SAS URL)"
                             + ("; not needed for a version already in the store" if local else "; required")
                             + ONLY_REMOVING)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, metavar="OUT.zip",
                        help="the bundle file: SHA-256, MD5 and size are read from it"
                             + ("" if local else " (this or --sha256 is required)"))
    source.add_argument("--sha256", metavar="H", help="the bundle's SHA-256 (hex), when the file is not at hand")
    parser.add_argument("--md5", metavar="M", help="with --sha256: the bundle's MD5 (hex or base64)")
    parser.add_argument("--size", type=int, metavar="N", help="with --sha256: the bundle's size in bytes")
    parser.add_argument("--name", help="model name; required" + ONLY_REMOVING)
    parser.add_argument("--version", help="model version; required" + ONLY_REMOVING)
    parser.add_argument("--pool", action="store_true",
                        help="roll the bundle out as models.<--name> (a model served beside the default one, "
                             "which requests name) instead of model (the default model); --threshold goes to "
                             "models.<name>.inference, the download settings stay top-level (every model's)")
    parser.add_argument("--remove", action="append", metavar="NAME", default=[],
                        help="take model NAME out of the pool: models.NAME set to null (repeat for several); "
                             "alone, or with a rollout of another model (e.g. --name NAME without --pool makes "
                             "a pool model the default one)")
    signature = parser.add_mutually_exclusive_group()
    signature.add_argument("--signature", metavar="SIG",
                           help="model.signature: the bundle's base64 signature (as `bundle --sign` printed it)")
    signature.add_argument("--sign", type=Path, metavar="PRIVATE.pem",
                           help="compute model.signature over name, version and SHA-256 with this Ed25519 key")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="model.allow_downgrade: true, to roll back below the highest version the device ran")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="inference.score_threshold (0..1); with --pool models.<name>.inference.score_threshold")
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
    variant_options.configure_twin(parser)
    parser.add_argument("--reference", action="store_true",
                        help="add the reference design's FileName/DownloadUrl/ContentMD5 keys (needs the MD5); "
                             "the default model only, not with --pool")
    add_store_option(parser)
    parser.set_defaults(url_optional=local)
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


ROLLOUT_OPTIONS = {  # dest -> option: what only a rollout (--name/--version) uses
    "url": "--url", "bundle": "--bundle", "sha256": "--sha256", "md5": "--md5", "size": "--size",
    "signature": "--signature", "sign": "--sign", "allow_downgrade": "--allow-downgrade", "threshold": "--threshold",
    "urgent": "--urgent", "compressed": "--compressed", "reference": "--reference", "pool": "--pool",
    "variant": "--variant", "as_variant": "--as-variant", "pin_variant": "--pin-variant",
    "drop_variant": "--drop-variant",
}


def is_rollout(args: argparse.Namespace) -> bool:
    """False: the patch only removes models (``--remove`` without ``--name``/``--version``)."""
    if args.remove and args.name is None and args.version is None:
        used = [option for dest, option in ROLLOUT_OPTIONS.items()
                if getattr(args, dest, None) not in (None, False, [])]
        if used:
            raise PatchError(f"{', '.join(used)}: options of a rollout, which needs --name and --version "
                             f"(a removal takes only --remove NAME)")
        return False
    missing = [option for option, value in (("--name", args.name), ("--version", args.version)) if value is None]
    if missing:
        raise PatchError(f"the following arguments are required: {', '.join(missing)} (or only --remove NAME)")
    return True


def _bundle_keys(args: argparse.Namespace, delta: dict | None) -> tuple[dict, str | None]:
    """The keys of the --bundle/--sha256 bundle (url, digests, signature, compression, delta);
    and its MD5 for --reference."""
    sha256, md5, size = _digests(args)
    bundle: dict = {"sha256": sha256}
    if args.url is not None:
        bundle["url"] = args.url
    if md5 is not None:
        bundle["md5"] = md5
    if size is not None:
        bundle["size"] = size
    signature = _signature(args, sha256)
    if signature is not None:
        bundle["signature"] = signature
    if args.compressed is not None:
        bundle.update(_compressed(args, sha256))
    if delta is not None:
        bundle["delta"] = delta
    return bundle, md5


def check_document(document: dict) -> list:
    """The patch as the device parses it (the default model's part and each ``models.<name>``);
    raises ``PatchError``."""
    from service.update.desired import DesiredError

    try:
        return desired_models(document)
    except DesiredError as exc:
        raise PatchError(f"the device would refuse this patch: {exc}") from None


def _removals(args: argparse.Namespace) -> dict:
    from service.repository import RepositoryError, check_part

    removed = {}
    for name in args.remove:
        try:
            check_part("name", name)
        except RepositoryError as exc:
            raise PatchError(f"--remove {name!r}: {exc}") from None
        if args.pool and name == args.name:
            raise PatchError(f"--remove {name} and --pool --name {name} exclude each other")
        removed[name] = None
    return removed


def build_patch(args: argparse.Namespace, delta: dict | None = None) -> dict:
    """The desired patch for the bundle (``delta``: a ``model.delta`` object to add): ``model``,
    or with ``--pool`` ``models.<name>``; plus ``models.<name>: null`` per ``--remove``."""
    from service.update.desired import MODEL_KEYS

    removals = _removals(args)
    if not is_rollout(args):
        patch = {"models": removals}
        download = _download_settings(args)  # top-level, every model's: may ride along
        if download:
            patch["download"] = download
        check_document(patch)
        return patch
    try:
        variants = variant_options.desired_variants(args, lambda sha256: _signature(args, sha256))
    except variant_options.VariantInputError as exc:
        raise PatchError(str(exc)) from None
    if args.url is None and not getattr(args, "url_optional", False) and not variants:
        raise PatchError("the following arguments are required: --url (or --variant)")
    if args.bundle is None and args.sha256 is None and not variants:
        raise PatchError("one of the arguments --bundle --sha256 is required")
    if args.pool and args.reference:
        raise PatchError("--reference describes the default model (model) only: leave it out with --pool")
    if args.reference and (variants or args.as_variant):
        raise PatchError("--reference keys name one bundle: leave them out with variants")
    model: dict = {"name": args.name, "version": args.version}
    md5 = None
    if args.bundle is not None or args.sha256 is not None:
        bundle, md5 = _bundle_keys(args, delta)
        if args.as_variant:
            if args.url is None:
                raise PatchError("--as-variant needs --url: where devices download that variant")
            variants = {args.as_variant: variant_options.whole_variant({**bundle, "version": args.version}),
                        **variants}
        else:
            model.update(bundle)
    elif delta is not None or args.compressed is not None:
        raise PatchError("a delta or --compressed describes --bundle: give it")
    if variants:
        model["variants"] = variants
    if args.pin_variant is not None:
        model["variant"] = args.pin_variant
    if args.allow_downgrade:
        model["allow_downgrade"] = True
    if args.urgent:
        model["urgent"] = True
    # Null for every key this bundle does not use: IoT Hub (and the local twin) merge the patch
    # into the model object, and a delta, compression or permission of the last rollout must
    # not ride along with this one.
    model.update({key: None for key in MODEL_KEYS if key not in model})
    inference = {"score_threshold": args.threshold} if args.threshold is not None else None
    patch: dict
    if args.pool:
        entry = {key: value for key, value in model.items() if key != "name"}  # the key is the name
        if inference is not None:
            entry["inference"] = inference
        patch = {"models": {args.name: entry, **removals}}
    else:
        patch = {"model": model}
        if inference is not None:
            patch["inference"] = inference
        if removals:
            patch["models"] = removals
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
    check_document(patch)
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
