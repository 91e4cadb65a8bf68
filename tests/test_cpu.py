"""What the CPU computes well comes from its flags and oneDNN's ISA limit, never from timing."""

import pytest

from mt import cpu


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    def with_flags(*flags: str) -> None:
        monkeypatch.setattr(cpu, "_present_flags", lambda: frozenset(flags))

    return with_flags


def test_onednn_isa_limit(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu.onednn_allows("AVX512_CORE_AMX")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu.onednn_allows("AVX2") and not cpu.onednn_allows("AVX2_VNNI")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cpu.onednn_allows("AVX512_CORE_VNNI") and not cpu.onednn_allows("AVX512_CORE_AMX")


AVX512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")


@pytest.mark.parametrize(
    "flags, limit, int8, bf16",
    [
        (("avx2", "fma"), None, False, False),  # AVX2 only
        (AVX512, None, False, True),  # Skylake: no VNNI, emulated bf16
        ((*AVX512, "avx512_vnni"), None, True, True),
        ((*AVX512, "avx512_vnni", "avx512_bf16"), "AVX2", False, False),  # the stand-in
        ((*AVX512, "avx512_vnni"), "AVX512_CORE", False, True),
        (("avx2", "fma", "avx_vnni"), None, True, False),  # Alder Lake
        ((*AVX512, "avx512_vnni", "amx_tile", "amx_bf16"), None, True, True),
    ],
)
def test_capabilities_follow_flags_and_the_limit(x86, monkeypatch, flags, limit, int8, bf16):
    x86(*flags)
    if limit:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert cpu.has_int8_dot_products() is int8
    assert cpu.has_bf16_vector_products() is bf16


def test_cpu_flags_keep_their_order(x86):
    x86("amx_bf16", "sse4_1", "avx2", "avx512f")
    assert cpu.cpu_flags() == ["avx2", "avx512f", "amx_bf16"]
