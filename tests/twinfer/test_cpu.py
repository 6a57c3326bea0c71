"""Whether int8 variants run well on a CPU, from /proc/cpuinfo texts of real machines."""
from __future__ import annotations

from twinfer.cpu import int8_support, parse_cpuinfo

AMD_ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu vme de pse tsc msr pae sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
"""
INTEL_ICELAKE = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz
flags		: fpu sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bitalg
"""
INTEL_ALDER_LAKE = "flags : fpu sse avx avx2 avx_vnni\n"
SAPPHIRE_RAPIDS = "flags : avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
RASPBERRY_PI_4 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU part	: 0xd08
"""
GRAVITON_2 = "Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n"


def support(text: str, machine: str = "x86_64"):
    return int8_support(parse_cpuinfo(text), machine)


def test_vnni_amx_and_arm_dot_product_run_int8_well():
    assert support(INTEL_ICELAKE).fast and support(INTEL_ICELAKE).features == ("AVX-512 VNNI",)
    assert support(INTEL_ALDER_LAKE).features == ("AVX-VNNI",)
    assert support(SAPPHIRE_RAPIDS).features == ("AMX-INT8", "AVX-512 VNNI")
    graviton = support(GRAVITON_2, "aarch64")
    assert graviton.fast and graviton.why == "aarch64 CPU with Arm dot product"


def test_avx2_alone_or_plain_neon_do_not():
    zen3 = support(AMD_ZEN3)
    assert not zen3.fast and "without int8 dot-product instructions" in zen3.why
    assert not support(RASPBERRY_PI_4, "aarch64").fast


def test_an_unreadable_cpuinfo_says_so():
    unknown = int8_support((), "riscv64")
    assert not unknown.fast and "features are unknown" in unknown.why
