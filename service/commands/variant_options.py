"""The command line of model variants: ``bundle``'s options for making and verifying a
variant (``--quantize``, ``--reference``, the gate, ONNX Runtime's quantisation knobs) and
``twin-patch``'s for offering several (``--variant``, ``--as-variant``, ``--pin-variant``,
``--drop-variant``). The work itself is in ``service.variant_bundle`` (operator side) and
``service.update.variants`` (device side).
"""
from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from service.quantize import FORMATS, METHODS, TYPES, QuantizeOptions
from service.verification import Gate

if TYPE_CHECKING:
    from service.variant_bundle import VariantReport

MODEL_SUFFIXES = (".onnx", ".tflite")


class VariantInputError(Exception):
    """A variant option the command cannot act on; the message says why."""


# --- bundle ------------------------------------------------------------------------------


def configure_bundle(parser: argparse.ArgumentParser) -> None:
    variant = parser.add_argument_group("variants (a quantised model verified against its reference)")
    made = variant.add_mutually_exclusive_group()
    made.add_argument("--quantize", choices=("int8",), help="bundle the model's int8 variant (ONNX models)")
    made.add_argument("--reference", type=Path, metavar="REF",
                      help="MODEL_FILE is a variant made elsewhere (e.g. an int8 .tflite); REF is its reference model")
    variant.add_argument("--calibration", type=Path, metavar="DIR",
                         help="pictures (.jpg .png .bmp .webp) to calibrate on and to measure agreement on")
    variant.add_argument("--calibration-limit", type=_positive, default=200, metavar="N",
                         help="use at most N pictures of DIR, by name (default 200)")
    variant.add_argument("--verification-pictures", type=_positive, default=4, metavar="N",
                         help="pictures in the bundle's verification set (default 4)")
    variant.add_argument("--min-f1", type=_unit, default=Gate.min_f1, metavar="F",
                         help=f"the gate, here and on every device (default {Gate.min_f1})")
    variant.add_argument("--score-tolerance", type=_unit, default=Gate.score_tolerance, metavar="D",
                         help=f"scores this close to the threshold still match (default {Gate.score_tolerance})")
    variant.add_argument("--match-iou", type=_unit, default=Gate.iou, metavar="IOU",
                         help=f"overlap for two detections to match (default {Gate.iou})")
    variant.add_argument("--quant-format", choices=FORMATS, default=QuantizeOptions.quant_format,
                         help="QDQ (default) or QOperator")
    variant.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    variant.add_argument("--activation-type", choices=TYPES, default=QuantizeOptions.activation_type,
                         help=f"default {QuantizeOptions.activation_type}")
    variant.add_argument("--weight-type", choices=TYPES, default=QuantizeOptions.weight_type,
                         help=f"default {QuantizeOptions.weight_type}")
    variant.add_argument("--calibrate-method", choices=METHODS, default=QuantizeOptions.calibrate_method,
                         help=f"default {QuantizeOptions.calibrate_method}")
    variant.add_argument("--full-range", action="store_true",
                         help="8-bit weights instead of the default 7-bit ones: only for fleets whose CPUs all have "
                              "VNNI (without it ONNX Runtime's int8 kernels may saturate)")
    variant.add_argument("--exclude-node", action="append", default=[], metavar="NODE",
                         help="keep this node in float (repeat for several)")


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _unit(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def makes_variant(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quantize", None) or getattr(args, "reference", None))


def check_bundle(args: argparse.Namespace, model: Path) -> None:
    """The variant options against the model file, before anything is built."""
    if makes_variant(args):
        if args.calibration is None:
            raise VariantInputError("--quantize and --reference need --calibration DIR: pictures to compare on")
        if args.quantize and model.suffix.lower() != ".onnx":
            raise VariantInputError(f"--quantize works on ONNX models; {model.name} is not one (quantise a .tflite "
                                    f"with its converter, then bundle it with --reference)")
        if args.reference is not None and (not args.reference.is_file()
                                           or args.reference.suffix.lower() not in MODEL_SUFFIXES):
            raise VariantInputError(f"reference model {args.reference} must be an existing .onnx or .tflite file")
    elif getattr(args, "calibration", None) is not None:
        raise VariantInputError("--calibration goes with --quantize or --reference")


def variant_entries(
    args: argparse.Namespace, entries: list[tuple[str, Path]], work: Path
) -> tuple[list[tuple[str, Path]], "VariantReport"]:
    """The bundle's files for a variant: the variant model, the reference's labels and
    metadata, the verification set (``service.variant_bundle``)."""
    from service.quantize import QuantizeError
    from service.variant_bundle import VariantError, calibration_pictures, make_variant
    from service.verification import VerificationError

    reference_dir, variant_dir = work / "reference", work / "variant"
    reference_dir.mkdir()
    variant_dir.mkdir()
    model_name, model = entries[0]
    reference = args.reference or model
    shutil.copyfile(reference, reference_dir / reference.name)
    for name, source in entries[1:]:
        shutil.copyfile(source, reference_dir / name)
    options = QuantizeOptions(
        quant_format=args.quant_format, per_channel=not args.per_tensor, activation_type=args.activation_type,
        weight_type=args.weight_type, calibrate_method=args.calibrate_method, reduce_range=not args.full_range,
        exclude_nodes=tuple(args.exclude_node),
    ) if args.quantize else None
    try:
        pictures = calibration_pictures(args.calibration, args.calibration_limit)
        report = make_variant(
            reference_dir, None if args.quantize else model, variant_dir, pictures,
            precision=args.quantize or "variant", quantize=options,
            gate=Gate(args.min_f1, args.match_iou, args.score_tolerance),
            verification_pictures=args.verification_pictures,
        )
    except (VariantError, QuantizeError, VerificationError) as exc:
        raise VariantInputError(str(exc)) from None
    from service.commands.bundle import directory_entries

    return directory_entries(variant_dir), report


def variant_rows(figures: dict) -> list[tuple[str, str]]:
    agreement = figures["agreement"]
    return [
        ("variant", f"{figures['precision']}, measured on this machine against the reference model"),
        ("agreement", f"F1 {agreement['f1']:.3f} (gate {figures['gate']['min_f1']}): {agreement['matched']} of "
                      f"{agreement['reference_detections']} reference detections found, "
                      f"{agreement['candidate_detections']} made, on {agreement['pictures']} pictures"),
        ("scores", f"mean difference {agreement['mean_score_diff']:.4f}, max {agreement['max_score_diff']:.4f}"),
        ("model size", f"{figures['variant_model_bytes']} bytes, {figures['size_ratio']:.2f}x the reference's "
                       f"{figures['reference_model_bytes']}"),
        ("speed", f"{figures['variant_ms']:.1f} ms vs {figures['reference_ms']:.1f} ms per inference "
                  f"({figures['speedup']:.2f}x, one thread)"),
    ]


# --- twin-patch ----------------------------------------------------------------------------


def configure_twin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", nargs=3, action="append", default=[], metavar=("NAME", "BUNDLE", "URL"),
                        help="offer BUNDLE (downloaded from URL) as model.variants.NAME; repeat in order of "
                             "preference (e.g. int8 first, fp32 after it)")
    parser.add_argument("--as-variant", metavar="NAME",
                        help="the --bundle/--sha256 and --url pair (and its delta) is model.variants.NAME, first")
    parser.add_argument("--pin-variant", metavar="NAME", help="model.variant: devices take this variant, whatever "
                                                               "their CPU")
    parser.add_argument("--drop-variant", action="append", default=[], metavar="NAME",
                        help="model.variants.NAME: null, removing a variant an earlier patch offered (IoT Hub "
                             "merges patches key by key)")


def whole_variant(entry: dict) -> dict:
    """Every key of a variant, those it does not use null: IoT Hub merges a patch into the
    entry an earlier one left, whose delta, compression or signature must not ride along."""
    from service.update.desired_bundle import VARIANT_KEYS

    return {**dict.fromkeys(VARIANT_KEYS), **entry}


def desired_variants(args: argparse.Namespace, sign: Callable[[str], str | None]) -> dict:
    """``model.variants`` from --variant NAME BUNDLE URL (in order) and --drop-variant; each
    entry says the version it belongs to, so one an older patch leaves behind is never used."""
    from service.update.verify import file_digests

    variants: dict = {}
    for name, bundle, url in args.variant:
        path = Path(bundle)
        if name in variants:
            raise VariantInputError(f"--variant {name} is given twice")
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise VariantInputError(
                f"--variant {name}: {bundle} is not a bundle ZIP (build one with `python -m service bundle`)")
        sha256, md5 = file_digests(path)
        entry = {"url": url, "sha256": sha256, "md5": md5, "size": path.stat().st_size, "version": args.version}
        signature = sign(sha256) if args.sign is not None else None
        if signature is not None:
            entry["signature"] = signature
        variants[name] = whole_variant(entry)
    for name in args.drop_variant:
        if name in variants:
            raise VariantInputError(f"--drop-variant {name} and --variant {name} exclude each other")
        variants[name] = None
    return variants
