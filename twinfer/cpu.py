"""What this CPU is, read once from ``/proc/cpuinfo``: for host artifact keys (a packed
weight file is only valid on the CPU it was packed for) and for choosing a model variant
(int8 only pays where the CPU has int8 dot-product instructions)."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache

CPUINFO = "/proc/cpuinfo"

# x86: VNNI (AVX-512 VNNI on Cascade Lake+/Zen 4+, AVX-VNNI on Alder Lake+) and AMX: int8
# dot products in one instruction. Without them ONNX Runtime's int8 kernels use
# VPMADDUBSW (saturating 16-bit sums; measured 1.5x over fp32 here, not 2-3x).
# Arm: the dot-product extension (asimddp, Armv8.2+) and I8MM.
INT8_DOT_PRODUCT_FLAGS = {
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
    "asimddp": "Arm dot product", "i8mm": "Arm I8MM",
}


@lru_cache(maxsize=1)
def cpuinfo_lines() -> tuple[tuple[str, str], ...]:
    """``(key, value)`` of every ``key: value`` line of /proc/cpuinfo (empty where there is none)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return ()
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> tuple[tuple[str, str], ...]:
    lines = []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            lines.append((name.strip(), value.strip()))
    return tuple(lines)


@dataclass(frozen=True)
class Int8Support:
    """Whether int8 models run well here, and the words that say why (for the twin)."""

    fast: bool
    why: str
    features: tuple[str, ...]  # the int8 dot-product features found


def int8_support(lines: tuple[tuple[str, str], ...] | None = None, machine: str | None = None) -> Int8Support:
    """From the CPU flags (x86 ``flags``, Arm ``Features``)."""
    lines = cpuinfo_lines() if lines is None else lines
    machine = machine or platform.machine() or "unknown"
    flags = {flag for key, value in lines if key in ("flags", "Features") for flag in value.split()}
    found = tuple(sorted(label for flag, label in INT8_DOT_PRODUCT_FLAGS.items() if flag in flags))
    if found:
        return Int8Support(True, f"{machine} CPU with {', '.join(found)}", found)
    if not flags:
        return Int8Support(False, f"{machine} CPU whose features are unknown (no {CPUINFO} flags)", ())
    return Int8Support(False, f"{machine} CPU without int8 dot-product instructions (no VNNI, AMX or Arm dot product)", ())
