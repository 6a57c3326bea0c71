"""``python -m service bundle``: build a model bundle ZIP and validate it as a device will.

The ZIP is built in a temporary directory, unpacked there with the device's own
``service.update.bundle.unpack_bundle`` (same safety checks and default limits) and the result
is loaded, decoder-detected and warmed up with ``service.update.validation.validate_model_dir``.
Only a bundle that passes is moved to the output path; the host artifact is not built
(``prepare=False``): it is specific to the device's CPU and runtime.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from service.commands import variant_options

NAME = "bundle"
HELP = "build a model bundle ZIP and validate it the way the device will; print its hashes"
DESCRIPTION = (
    "Zip a model file (.onnx or .tflite), its labels file (.txt, stored under its own name) and optionally a "
    "twinfer.json metadata file into a bundle, then unpack it with the device's unpacker and load, detect the "
    "decoder and warm up the model with the device's validation. On failure the reason is printed, the exit "
    "code is 1 and no bundle is written. On success prints path, size, SHA-256, MD5 (hex and base64, the form "
    "Blob Storage's Content-MD5 uses), decoder, format, input size and label count. With --sign (needs --name "
    "and --version: the signature covers them with the SHA-256) also the bundle's Ed25519 signature, for the "
    "twin's model.signature. With --quantize int8 (ONNX; needs the onnx package: requirements-operator.txt) the "
    "bundle holds the model's int8 variant instead, made by ONNX Runtime's static quantisation calibrated on "
    "--calibration's pictures; with --reference the model file is a variant made elsewhere and REF the model it "
    "stands in for. Both measure the variant against the reference on every calibration picture (F1 of matched "
    "detections at IoU 0.5, same class; mean score difference), its size and speed on this machine, refuse to "
    "write a bundle below --min-f1, and put a verification set in it (a few of the pictures, downscaled, with the "
    "reference's detections) that every device checks on its own CPU before serving the variant."
)
EPILOG = (
    "examples:\n"
    "  python -m service bundle model.onnx --labels labels.txt --metadata twinfer.json --name ssd --version 2.0 \\\n"
    "      --quantize int8 --calibration photos/ -o ssd_2.0_int8.zip   # + a verification set; gate F1 >= 0.95\n"
    "  python -m service bundle ssd_int8.tflite --reference ssd_fp32.tflite --calibration photos/ \\\n"
    "      --labels labels.txt -o ssd_int8.zip   # a variant made elsewhere, verified against its reference\n"
    "  python -m service bundle face.tflite --labels labels.txt -o face_1.0.zip\n"
    "  python -m service bundle yolo.onnx --labels coco.txt --metadata twinfer.json \\\n"
    "      --name yolo --version 2.0 -o yolo_2.0.zip --json\n"
    "  python -m service bundle face.tflite --labels labels.txt --name face --version 1.0 \\\n"
    "      -o face_1.0.zip --sign keys/private.pem"
)
MODEL_SUFFIXES = (".onnx", ".tflite")
METADATA_NAME = "twinfer.json"  # what twinfer.loader reads
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give the same bytes and hashes


class BundleInputError(Exception):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_file", type=Path, metavar="MODEL_FILE", help="the .onnx or .tflite model")
    parser.add_argument("--labels", type=Path, metavar="FILE",
                        help="labels, one per line (index = class id), a .txt file")
    parser.add_argument("--metadata", type=Path, metavar="twinfer.json",
                        help="metadata (decoder, input, thresholds); stored as twinfer.json")
    parser.add_argument("--name", help="model name (with --version): checked, and used for validation and output")
    parser.add_argument("--version", help="model version (with --name)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.zip", help="bundle to write")
    parser.add_argument("--sign", type=Path, metavar="PRIVATE.pem",
                        help="Ed25519 private key (python -m service keygen): print the bundle's signature "
                             "(needs --name and --version)")
    parser.add_argument("--compressed", action="store_true",
                        help="also write OUT.zip.zst, the bundle compressed for the wire (twin-patch --compressed)")
    parser.add_argument("--sample", type=Path, metavar="PICTURE",
                        help="run the model on this picture as the device would and print its answer in brief")
    parser.add_argument("--detector", type=Path, metavar="DETECTOR.zip",
                        help="a chained model (twinfer.json chain): the bundle of the detector it names; checks "
                             "that it can feed this model (and, with --sample, runs the chain)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    variant_options.configure_bundle(parser)


def _entries(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(name in the ZIP, source file), checked before anything is written."""
    model = args.model_file
    if not model.is_file():
        raise BundleInputError(f"model file {model} does not exist")
    if model.suffix.lower() not in MODEL_SUFFIXES:
        raise BundleInputError(f"model file {model.name} must end in .onnx or .tflite")
    entries = [(model.name, model)]
    if args.labels is not None:
        if not args.labels.is_file():
            raise BundleInputError(f"labels file {args.labels} does not exist")
        if args.labels.suffix.lower() != ".txt":
            raise BundleInputError(
                f"labels file {args.labels.name} must end in .txt (the device reads labels from *.txt)"
            )
        entries.append((args.labels.name, args.labels))
    if args.metadata is not None:
        if not args.metadata.is_file():
            raise BundleInputError(f"metadata file {args.metadata} does not exist")
        try:
            metadata = json.loads(args.metadata.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleInputError(f"metadata file {args.metadata} is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise BundleInputError(f"metadata file {args.metadata} must hold a JSON object")
        entries.append((METADATA_NAME, args.metadata))
    names = [name.casefold() for name, _ in entries]
    if len(set(names)) != len(names):
        raise BundleInputError(f"two files would have the same name in the bundle: {[name for name, _ in entries]}")
    if any(path.resolve() == args.output.resolve() for _, path in entries):
        raise BundleInputError(f"output {args.output} is one of the inputs")
    if (args.name is None) != (args.version is None):
        raise BundleInputError("give --name and --version together")
    if args.name is not None:
        from service.repository import RepositoryError, check_part

        try:
            check_part("name", args.name)
            check_part("version", args.version)
        except RepositoryError as exc:
            raise BundleInputError(str(exc)) from None
    if not args.output.parent.resolve().is_dir():
        raise BundleInputError(f"output directory {args.output.parent} does not exist")
    for option, path in (("--sample", args.sample), ("--detector", args.detector)):
        if path is not None and not path.is_file():
            raise BundleInputError(f"{option} {path} does not exist")
    if getattr(args, "sign", None) is not None and args.name is None:
        raise BundleInputError("--sign needs --name and --version: the signature covers them with the SHA-256")
    try:
        variant_options.check_bundle(args, model)
    except variant_options.VariantInputError as exc:
        raise BundleInputError(str(exc)) from None
    return entries


def _signing_key(args: argparse.Namespace):
    """The private key of --sign, loaded before anything is built (None without --sign)."""
    if getattr(args, "sign", None) is None:
        return None
    from service.update.signing import KeyFileError, load_private_key

    try:
        return load_private_key(args.sign)
    except KeyFileError as exc:
        raise BundleInputError(str(exc)) from None


def directory_entries(directory: Path) -> list[tuple[str, Path]]:
    """A directory's files as bundle entries, the model file first (then by name)."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return sorted(((p.name, p) for p in files), key=lambda entry: not entry[0].lower().endswith(MODEL_SUFFIXES))


def write_zip(path: Path, entries: list[tuple[str, Path]]) -> None:
    """Flat, regular files only, fixed timestamps (reproducible hashes); model files stored, text deflated.

    Stored so delta patches work (service.update.delta): deflate scrambles every byte after a change (a head
    fine-tune's patch is 95% of a deflated bundle, 7.5% of a stored one). Measured deflate saving:
    11% on fp32 weights and on the fp16 .tflite, 40% on the demo .onnx (fp16 values held in fp32).
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED if name.lower().endswith(MODEL_SUFFIXES) else zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.file_size = source.stat().st_size  # lets zipfile choose ZIP64 for big models
            with open(source, "rb") as src, archive.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def build_and_validate(args: argparse.Namespace, work: Path) -> dict:
    """Build the ZIP in ``work`` and validate it; returns the result (``path`` is the ZIP in ``work``)."""
    from service.update.bundle import BundleError, unpack_bundle
    from service.update.validation import validate_model_dir
    from service.update.verify import file_digests

    entries = _entries(args)
    private_key = _signing_key(args)
    variant = None
    if variant_options.makes_variant(args):
        try:
            entries, variant = variant_options.variant_entries(args, entries, work)
        except variant_options.VariantInputError as exc:
            raise BundleInputError(str(exc)) from None
    zip_path = work / "bundle.zip"
    write_zip(zip_path, entries)
    unpacked = work / "unpacked"
    unpacked.mkdir()
    try:
        files = unpack_bundle(zip_path, unpacked)  # the device's unpacker, with its default limits
    except BundleError as exc:
        raise BundleInputError(f"the device would refuse this bundle ({exc.reason}): {exc}") from None
    name, version = args.name or "candidate", args.version or "0"
    try:
        validated = validate_model_dir(unpacked, name, version, prepare=False)
    except Exception as exc:  # the runtime's own errors too: any failure is a refusal on the device
        raise BundleInputError(f"the model does not validate: {exc}") from None
    task = _check_task(args, unpacked, work)
    sha256, md5 = file_digests(zip_path)
    signed: dict = {}
    if private_key is not None:
        from service.update.signing import key_id, sign

        signed = {"signature": sign(private_key, args.name, args.version, sha256),
                  "key_id": key_id(private_key.public_key())}
    return {
        "path": str(zip_path),
        "size": zip_path.stat().st_size,
        "sha256": sha256,
        "md5": md5,
        "md5_base64": base64.b64encode(bytes.fromhex(md5)).decode(),
        **task,
        "decoder": validated.decoder,
        "format": validated.format,
        "input": {"width": validated.input_width, "height": validated.input_height},
        "labels": validated.labels,
        "files": [path.name for path in files],
        "name": args.name,
        "version": args.version,
        **signed,
        **({"variant": variant.figures()} if variant is not None else {}),
    }


def _check_task(args: argparse.Namespace, unpacked: Path, work: Path) -> dict:
    """The task, the chain's detector and the sample's answer (``service.task_check``)."""
    from service.task_check import TaskCheckError, check_task
    from service.update.bundle import BundleError, unpack_bundle

    detector_dir = None
    if args.detector is not None:
        detector_dir = work / "detector"
        detector_dir.mkdir()
        try:
            unpack_bundle(args.detector, detector_dir)
        except BundleError as exc:
            raise BundleInputError(f"--detector {args.detector}: the device would refuse it ({exc.reason}): {exc}") from None
    sample = args.sample.read_bytes() if args.sample is not None else None
    try:
        return check_task(unpacked, detector_dir, sample)
    except TaskCheckError as exc:
        raise BundleInputError(str(exc)) from None
    except Exception as exc:  # the detector's load, the runtime's own errors
        raise BundleInputError(f"{f'--detector {args.detector}: ' if args.detector else ''}{exc}") from None


def _place(source: Path, target: Path) -> None:
    """Copy next to the target, then rename: the output path holds a whole bundle or nothing new.
    The bundle gets the mode any new file gets (``mkstemp``'s 0600 would keep a web server
    running as another user from serving it)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="." + target.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _print_human(result: dict) -> None:
    rows = [
        ("bundle", result["path"]),
        ("files", ", ".join(result["files"])),
        ("size", f"{result['size']} bytes"),
        ("sha256", result["sha256"]),
        ("md5", result["md5"]),
        ("md5_base64", f"{result['md5_base64']}  (the form of Blob Storage's Content-MD5)"),
        ("task", result["task"]),
        ("decoder", result["decoder"]),
        ("format", result["format"]),
        ("input", f"{result['input']['width']}x{result['input']['height']}"),
        ("labels", str(result["labels"])),
    ]
    if result["name"]:
        rows.insert(1, ("model", f"{result['name']} {result['version']}"))
    if result.get("chain"):
        chain = result["chain"]
        rows.append(("chain", f"fed by detector {chain['detector']!r}"
                              + ("" if chain["checked"] else " (not checked: give --detector ITS_BUNDLE.zip)")))
    if result.get("sample"):
        rows.append(("sample", f"{result['sample']['summary']} ({result['sample']['timing_ms']['total']} ms)"))
    if result.get("signature"):
        rows += [("signature", result["signature"]), ("key_id", result["key_id"])]
    if result.get("compressed"):
        rows.append(("compressed", f"{result['compressed']['path']} ({result['compressed']['size']} bytes)"))
    if result.get("variant"):
        rows += variant_options.variant_rows(result["variant"])
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    name = result["name"] or "<NAME>"
    version = result["version"] or "<VERSION>"
    signature = f" --signature {result['signature']}" if result.get("signature") else ""
    print(f"\nnext: upload it, then\n  python -m service twin-patch --url <URL> --bundle {result['path']} "
          f"--name {name} --version {version}{signature}")


def run(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="twinfer-bundle-") as work:
            result = build_and_validate(args, Path(work))
            _place(Path(result["path"]), args.output)
    except BundleInputError as exc:
        kept = " (the existing file there is left unchanged)" if args.output.exists() else ""
        print(f"error: {exc}\nno bundle written to {args.output}{kept}", file=sys.stderr)
        return 1
    result["path"] = str(args.output.resolve())
    if args.compressed:
        from service.update.delta import compress_bundle

        packed = args.output.with_name(args.output.name + ".zst")
        result["compressed"] = {"path": str(packed.resolve()), "size": compress_bundle(args.output, packed).patch_size}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_human(result)
    return 0
