#!/usr/bin/env python3
"""Delta (patch) engines for model bundle updates, measured on the real demo model.

Five updates of the demo bundle (``models/default``: SSD MobileNetV2 ONNX, labels, twinfer.json),
written with ``service.commands.bundle.write_zip`` (model stored, text deflated):
labels (one label renamed), metadata (score threshold), head (fine-tune of the detection head,
``BoxPredictor_*`` initializers, w * (1 + N(0, 0.01))), retrain (every float initializer moved so),
format (the same detector as a .tflite bundle: a full download is expected).

Engines: ``service.update.delta`` (zstd, base as raw-content dictionary, window over base + new) at a few
levels, and bsdiff4. Each build and apply runs in a fresh interpreter that first imports both
engines; its peak RSS (VmHWM) is quoted with the increase over that interpreter's RSS after the
imports (the baseline). Apply output is checked byte for byte. Times and RSS are medians of
``--repeat`` runs (the machine may be shared). Then: the head case with deflated bundles (the old
``write_zip``), and the full bundle zstd-compressed without a base, for transport comparison.

Run from the project root: ``.venv/bin/python ops/bench/delta.py [--repeat 3] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from service.commands.bundle import write_zip  # noqa: E402
from service.update.delta import DEFAULT_LEVEL  # noqa: E402
from tests.support.paths import DEFAULT_MODEL, MODELS  # noqa: E402

MiB = 1024 * 1024
TFLITE = MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite"
TARGET_HEAD = 0.15  # patch / full bundle, head-only fine-tune


@dataclass(frozen=True)
class Case:
    name: str
    base: Path
    new: Path
    deflated_new_size: int  # what the full download cost with the old, all-deflated bundles


@dataclass(frozen=True)
class Row:
    case: str
    engine: str
    full_bytes: int
    deflated_full_bytes: int
    patch_bytes: int
    build_s: float
    build_peak_mib: float
    build_over_baseline_mib: float
    apply_s: float
    apply_peak_mib: float
    apply_over_baseline_mib: float


def entries(model: Path = DEFAULT_MODEL / "model.onnx", labels: Path = DEFAULT_MODEL / "labels.txt",
            metadata: Path = DEFAULT_MODEL / "twinfer.json") -> list[tuple[str, Path]]:
    return [(model.name, model), ("labels.txt", labels), ("twinfer.json", metadata)]


def write_deflated_zip(path: Path, files: list[tuple[str, Path]]) -> None:
    """The bundle layout before models were stored: every file deflated, same fixed timestamps."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), source.read_bytes(),
                             compress_type=zipfile.ZIP_DEFLATED)


def variant_inputs(work: Path) -> dict[str, list[tuple[str, Path]]]:
    """The files of each new bundle (the base is ``entries()``)."""
    from tests.support.finetune import perturb

    labels, metadata = work / "labels.txt", work / "twinfer.json"
    labels.write_text((DEFAULT_MODEL / "labels.txt").read_text().replace("Coffee cup", "Mug"))
    settings = json.loads((DEFAULT_MODEL / "twinfer.json").read_text())
    metadata.write_text(json.dumps({**settings, "score_threshold": 0.4}, indent=2))
    for name, head_only in (("head", True), ("retrain", False)):
        (work / name).mkdir()
        perturb(DEFAULT_MODEL / "model.onnx", work / name / "model.onnx", head_only=head_only)
    return {
        "labels": entries(labels=labels),
        "metadata": entries(metadata=metadata),
        "head": entries(model=work / "head" / "model.onnx"),
        "retrain": entries(model=work / "retrain" / "model.onnx"),
        "format": entries(model=TFLITE),
    }


def build_cases(work: Path, variants: dict[str, list[tuple[str, Path]]]) -> list[Case]:
    base = work / "base.zip"
    write_zip(base, entries())
    cases = []
    for name, files in variants.items():
        new, deflated = work / f"{name}.zip", work / f"{name}.deflated.zip"
        write_zip(new, files)
        write_deflated_zip(deflated, files)
        cases.append(Case(name, base, new, deflated.stat().st_size))
    return cases


# --- one measured operation, in a fresh interpreter ----------------------------------------------


def peak_rss_kib() -> int:
    """VmHWM: this process's peak RSS. Not ru_maxrss, which Linux carries over exec from the forking parent."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def child(op: str, engine: str, a: str, b: str, c: str) -> None:
    """build: a=base b=new c=patch; apply: a=base b=patch c=out. Prints seconds and RSS (KiB) as JSON."""
    import bsdiff4

    from service.update.delta import apply_patch, build_patch

    baseline = peak_rss_kib()
    started = time.perf_counter()
    if engine == "bsdiff4" and op == "build":
        bsdiff4.file_diff(a, b, c)
    elif engine == "bsdiff4":
        bsdiff4.file_patch(a, c, b)  # (old, new, patch)
    elif op == "build":
        build_patch(Path(a), Path(b), Path(c), level=int(engine.split("-")[1]))
    else:
        apply_patch(Path(a), Path(b), Path(c), max_output_bytes=1 << 30)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "baseline_kib": baseline,
                      "peak_kib": peak_rss_kib()}))


def measure(op: str, engine: str, a: Path, b: Path, c: Path, repeat: int) -> tuple[float, float, float]:
    """Median (seconds, peak MiB, MiB over the baseline) of ``repeat`` fresh child runs."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, __file__, "--child", op, engine, str(a), str(b), str(c)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    return (statistics.median(run["seconds"] for run in runs),
            statistics.median(run["peak_kib"] for run in runs) / 1024,
            statistics.median(run["peak_kib"] - run["baseline_kib"] for run in runs) / 1024)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def run_case(case: Case, engine: str, work: Path, repeat: int) -> Row:
    patch, out = work / f"{case.name}.{engine}.patch", work / f"{case.name}.{engine}.out"
    build = measure("build", engine, case.base, case.new, patch, repeat)
    applied = measure("apply", engine, case.base, patch, out, repeat)
    if sha256(out) != sha256(case.new):
        raise SystemExit(f"{engine} on {case.name}: the applied result differs from the new bundle")
    out.unlink()
    return Row(case.name, engine, case.new.stat().st_size, case.deflated_new_size, patch.stat().st_size,
               *build, *applied)


# --- report ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    print(f"{'case':<9} {'engine':<8} {'patch B':>11} {'%full':>6} {'%defl':>6} {'build s':>8} "
          f"{'build MiB (+base)':>18} {'apply s':>8} {'apply MiB (+base)':>18}")
    for row in rows:
        print(f"{row.case:<9} {row.engine:<8} {row.patch_bytes:>11,} {100 * row.patch_bytes / row.full_bytes:>5.1f}% "
              f"{100 * row.patch_bytes / row.deflated_full_bytes:>5.1f}% {row.build_s:>8.2f} "
              f"{row.build_peak_mib:>8.0f} (+{row.build_over_baseline_mib:>5.0f}) {row.apply_s:>8.3f} "
              f"{row.apply_peak_mib:>8.0f} (+{row.apply_over_baseline_mib:>5.0f})")


def deflate_comparison(work: Path, head: Case, level: int) -> dict:
    """The head case with every file deflated (the old bundles), and the full bundle zstd'd without a base."""
    from service.update.delta import build_patch

    base, new, empty = work / "base.deflated.zip", work / "head.deflated.zip", work / "empty"
    write_deflated_zip(base, entries())
    with zipfile.ZipFile(head.new) as archive:  # the same files as the stored head bundle
        files = [(name, work / name) for name in archive.namelist()]
        archive.extractall(work)
    write_deflated_zip(new, files)
    empty.write_bytes(b"")
    return {
        "level": level,
        "stored_full": head.new.stat().st_size,
        "stored_patch": build_patch(head.base, head.new, work / "stored.patch", level=level).patch_size,
        "deflated_full": new.stat().st_size,
        "deflated_patch": build_patch(base, new, work / "deflated.patch", level=level).patch_size,
        "stored_full_zstd": build_patch(empty, head.new, work / "full.zst", level=level).patch_size,
    }


def print_deflate(result: dict) -> None:
    level, stored_patch = result["level"], result["stored_patch"]
    print(f"\nhead fine-tune, zstd-{level}: stored vs deflated model file")
    print(f"  stored bundles:   full {result['stored_full']:>11,} B, patch {stored_patch:>11,} B "
          f"({100 * stored_patch / result['stored_full']:.1f}% of full)")
    print(f"  deflated bundles: full {result['deflated_full']:>11,} B, patch {result['deflated_patch']:>11,} B "
          f"({100 * result['deflated_patch'] / result['deflated_full']:.1f}% of full); "
          f"deflate saves {100 * (1 - result['deflated_full'] / result['stored_full']):.1f}% on this bundle")
    print(f"  stored bundle zstd-{level}'d with no base (a full download as a patch from nothing): "
          f"{result['stored_full_zstd']:,} B ({100 * result['stored_full_zstd'] / result['deflated_full']:.1f}% "
          f"of the deflated bundle)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs per build and apply (medians)")
    parser.add_argument("--levels", default="12,19,22",
                        help=f"zstd levels, comma-separated ({DEFAULT_LEVEL}: the default)")
    parser.add_argument("--no-bsdiff", action="store_true", help="skip bsdiff4 (its build needs ~17x the base)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write every figure as JSON")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    engines = [f"zstd-{level}" for level in args.levels.split(",")] + ([] if args.no_bsdiff else ["bsdiff4"])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; medians of {args.repeat} run(s); "
          "%full: of the new (stored) bundle, %defl: of the same bundle all-deflated")
    with tempfile.TemporaryDirectory(prefix="twinfer-delta-") as tmp:
        work = Path(tmp)
        cases = build_cases(work, variant_inputs(work))
        rows = [run_case(case, engine, work, args.repeat) for case in cases for engine in engines]
        print_table(rows)
        (work / "deflate").mkdir()
        deflate = deflate_comparison(work / "deflate", next(case for case in cases if case.name == "head"),
                                     DEFAULT_LEVEL)
        print_deflate(deflate)
    head = deflate["stored_patch"] / deflate["stored_full"]
    print(f"\nhead fine-tune target: patch <= {TARGET_HEAD:.0%} of the full bundle: {head:.1%} "
          f"({'met' if head <= TARGET_HEAD else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows], "deflate": deflate}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
