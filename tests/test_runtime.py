"""Host-side runtime settings."""

import resource

import pytest
import torch

from mt.runtime import keep_freed_memory


def _training_step_allocations() -> None:
    """A training step's pattern: a few large tensors (logits, their gradient, activations),
    made and freed in turn. (A single tensor freed and made again is not representative: glibc
    pads each 64-byte-aligned request, so an exactly-sized freed block is never reused.)"""
    logits = torch.empty(24 * 2**20).fill_(1.0)  # 96 MB
    grad = torch.empty_like(logits).fill_(2.0)
    hidden = torch.empty(3 * 2**20).fill_(3.0)  # 12 MB
    del logits
    out = grad[: 3 * 2**20] + hidden
    del grad, hidden, out


def _page_faults(steps: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        _training_step_allocations()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_without_faulting_pages_in_again():
    if not keep_freed_memory():
        pytest.skip("needs Linux with glibc")
    _page_faults(3)  # the heap grows to the steady state
    # Each step touches ~200 MB, ~50,000 pages of 4 KB: with mmap'd blocks handed back on free
    # (glibc's default), every step faults them in anew (measured: ~53,000 faults a step).
    assert _page_faults(5) < 1000


def test_precision_auto_is_bf16_where_bf16_matmuls_are_fast(monkeypatch):
    from mt import runtime
    from mt.runtime import autocast, resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"  # bf16 units: ~4x the matmul rate
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", gpu) == "fp32"
    assert resolve_precision("fp16", cpu) == "fp16"  # an explicit choice is kept
    with autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_cpu_bf16_probe_compares_measured_matmul_times(monkeypatch):
    from mt import runtime

    assert runtime.matmul_seconds(torch.bfloat16, size=64, repeats=1) > 0
    for bf16_seconds, expected in ((1.0, True), (2.5, False)):  # fp32 takes 3 s
        runtime.cpu_bf16_is_fast.cache_clear()
        fake = {torch.float32: 3.0, torch.bfloat16: bf16_seconds}
        monkeypatch.setattr(runtime, "matmul_seconds", fake.__getitem__)
        assert runtime.cpu_bf16_is_fast() is expected
    runtime.cpu_bf16_is_fast.cache_clear()
