"""What this CPU computes well, decided from what it reports, never from timing: its flags
(``/proc/cpuinfo``, as ``lscpu`` lists them) and the highest instruction set oneDNN is allowed
(``ONEDNN_MAX_CPU_ISA``, which torch's and CTranslate2's oneDNN both obey). The same machine
and environment always give the same answers, however busy the machine is.
"""

import functools
import os
import platform
from pathlib import Path

MATRIX_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)
"""The flags that decide the matrix kernels (fp32 / int8 dot products / bf16 / AMX)."""

ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "ALL",
)
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values, lowest first (oneDNN's "CPU dispatcher control")."""


@functools.lru_cache(maxsize=1)
def _present_flags() -> frozenset[str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((x for x in cpuinfo.splitlines() if x.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_flags() -> list[str]:
    """This CPU's :data:`MATRIX_FLAGS`, in that order."""
    present = _present_flags()
    return [flag for flag in MATRIX_FLAGS if flag in present]


def onednn_allows(isa: str) -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` (unset: no limit) lets oneDNN use ``isa``."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL"))
    limit = limit.strip().upper()
    if limit not in ONEDNN_ISAS:
        return True  # a value oneDNN does not know leaves it unlimited
    return ONEDNN_ISAS.index(isa) <= ONEDNN_ISAS.index(limit)


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_int8_dot_products() -> bool:
    """Whether oneDNN adds int8 products straight into 32 bits here (VNNI). Without it (AVX2
    only, AVX-512 before Cascade Lake) x86 int8 kernels add pairs of u8 x s8 products in
    saturating 16-bit lanes, which clips large activations. Other CPUs: true (their int8
    kernels widen first)."""
    if not is_x86():
        return True
    flags = set(cpu_flags())
    return ("avx512_vnni" in flags and onednn_allows("AVX512_CORE_VNNI")) or (
        "avx_vnni" in flags and onednn_allows("AVX2_VNNI")
    )


def has_bf16_vector_products() -> bool:
    """Whether oneDNN has vector bf16 matrix kernels here: AVX-512 (emulated, often slower
    than fp32), AVX512-BF16 or AMX (native); other CPUs: ARM's BF16 extension. Where it has
    none (AVX2 only) a bf16 product is many times slower than fp32's."""
    flags = _present_flags()
    if not is_x86():
        return "bf16" in flags
    avx512 = {"avx512bw", "avx512vl", "avx512dq"} <= flags and onednn_allows("AVX512_CORE")
    amx = "amx_bf16" in flags and onednn_allows("AVX512_CORE_AMX")
    return avx512 or amx
