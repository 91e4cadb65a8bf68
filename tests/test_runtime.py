"""Host-side runtime settings."""

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mt.cpu import has_bf16_vector_products
from mt.runtime import (
    DECODING_ONEDNN_CACHE_CAPACITY,
    ONEDNN_CACHE_CAPACITY,
    ONEDNN_CACHE_CHOSEN_BY_MT,
    ONEDNN_CACHE_VARIABLES,
    bound_onednn_caches,
    keep_freed_memory,
)
from tests.conftest import untrained_checkpoint


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


def test_auto_candidates_are_fp32_and_bf16_where_the_device_computes_in_bf16(monkeypatch):
    from mt import runtime
    from mt.runtime import auto_candidates, autocast

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "has_bf16_vector_products", lambda: True)
    assert auto_candidates(cpu) == ["fp32", "bf16"]  # the probe tells which is faster
    monkeypatch.setattr(runtime, "has_bf16_vector_products", lambda: False)
    assert auto_candidates(cpu) == ["fp32"]  # no vector bf16 kernels: not even tried
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_candidates(gpu) == ["fp32", "bf16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_candidates(gpu) == ["fp32"]
    with autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_with_onednn_held_to_avx2_the_only_candidate_is_fp32(monkeypatch):
    """Decided from the CPU's flags and oneDNN's limit, whatever the timing or the load."""
    from mt import cpu, runtime

    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(runtime, "choose_by_timing", lambda *a, **k: 1 / 0)  # never timed
    for _ in range(3):
        assert runtime.auto_candidates(torch.device("cpu")) == ["fp32"]


def test_timing_probes_leave_the_random_streams_alone():
    from mt.bench.training_speed import matmul_seconds

    state = torch.get_rng_state()
    matmul_seconds(torch.float32, size=32, repeats=1)
    matmul_seconds(torch.bfloat16, size=32, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)  # dropout masks stay as they would be


def _sleeper(seconds: float, calls: list):
    def probe():
        calls.append(seconds)
        time.sleep(seconds)

    return probe


@pytest.mark.parametrize(
    ("bf16_seconds", "expected"),
    [(0.02, "bf16"), (0.06, "fp32")],  # fp32 takes 0.06 s; a tie goes to fp32
)
def test_choose_by_timing_takes_the_fastest_and_fp32_wins_ties(bf16_seconds, expected):
    from mt.runtime import choose_by_timing

    calls: list = []
    probes = {"fp32": _sleeper(0.06, calls), "bf16": _sleeper(bf16_seconds, calls)}
    choice = choose_by_timing(probes, torch.device("cpu"), repeats=2)
    assert choice.precision == expected
    assert choice.seconds["fp32"] >= 0.06 and choice.seconds["bf16"] >= bf16_seconds
    assert len(calls) == 6  # one untimed run each, then two alternating rounds
    report = choice.report()
    assert report["chosen"] == expected and report["probe_speedup_vs_fp32"] >= 1.0
    assert expected in choice.describe() and "fp32" in choice.describe()


def test_choose_by_timing_stops_early_when_its_budget_is_spent():
    from mt.runtime import choose_by_timing

    calls: list = []
    probes = {"fp32": _sleeper(0.05, calls), "bf16": _sleeper(0.05, calls)}
    choose_by_timing(probes, torch.device("cpu"), repeats=10, budget_s=0.05)
    assert len(calls) == 4  # the untimed runs and one round: the budget was spent in it


# Many bf16 matmuls, each with a new number of rows (as token-budget batches have), forward
# and backward; prints the growth of resident memory in MB.
_SHAPE_CHURN = """
import random, sys
import torch
if sys.argv[1] == "bounded":
    from mt.runtime import use_device
    use_device("cpu")
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
torch.set_num_threads(1)
w = torch.randn(1024, 256, dtype=torch.bfloat16, requires_grad=True)
rows = list(range(64, 64 + 250 * 8, 8))
random.Random(0).shuffle(rows)
x = torch.randn(8, 256, dtype=torch.bfloat16, requires_grad=True)
torch.nn.functional.linear(x, w).float().sum().backward()
start = rss_mb()
for m in rows:
    x = torch.randn(m, 256, dtype=torch.bfloat16, requires_grad=True)
    torch.nn.functional.linear(x, w).float().sum().backward()
print(rss_mb() - start)
"""


def _memory_growth_mb(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ONEDNN_CACHE_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", _SHAPE_CHURN, mode], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
@pytest.mark.skipif(
    not has_bf16_vector_products(),
    reason="no oneDNN bf16 kernels here (AVX2 only): auto never picks bf16, and the churn would "
    "take minutes in the slow fallback",
)
def test_bf16_matmuls_of_ever_new_shapes_do_not_pile_up_memory():
    default = _memory_growth_mb("default")
    if default < 100:
        pytest.skip(f"bf16 matmuls keep no per-shape cache here (+{default:.0f} MB)")
    bounded = _memory_growth_mb("bounded")
    assert bounded < 0.3 * default, (bounded, default)


def test_a_cache_capacity_the_user_set_is_kept(monkeypatch):
    monkeypatch.delenv(ONEDNN_CACHE_CHOSEN_BY_MT, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "256")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert bound_onednn_caches(16) == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16",
        "LRU_CACHE_CAPACITY": "256",
    }
    # A child process inherits this environment: mt's choice is its to change, the user's is not.
    assert bound_onednn_caches(DECODING_ONEDNN_CACHE_CAPACITY) == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(DECODING_ONEDNN_CACHE_CAPACITY),
        "LRU_CACHE_CAPACITY": "256",
    }


def test_a_decoding_process_keeps_more_kernels_than_a_training_one(
    monkeypatch, tmp_path, tokenizer
):
    """A search's bf16 products come in a few padded shapes that it meets again and again
    (mt/kernels/packed.py); training's batches bring new shapes all the time. The training
    process's choice reaches a decoding child (the benchmark's contestants) and is replaced."""
    from mt.runtime import use_device

    for name in (*ONEDNN_CACHE_VARIABLES, ONEDNN_CACHE_CHOSEN_BY_MT):
        monkeypatch.delenv(name, raising=False)
    use_device("cpu")  # a training process
    assert {os.environ[n] for n in ONEDNN_CACHE_VARIABLES} == {str(ONEDNN_CACHE_CAPACITY)}
    script = (
        "import os, sys; from mt.decoding.loading import load_translator; "
        "from mt.config import DecodeConfig; load_translator(sys.argv[1], DecodeConfig(), 'cpu'); "
        f"print(*(os.environ[n] for n in {ONEDNN_CACHE_VARIABLES!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(untrained_checkpoint(tmp_path, tokenizer))],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(DECODING_ONEDNN_CACHE_CAPACITY)] * 2


def test_a_gpu_run_leaves_cudnn_attention_out(monkeypatch):
    """cuDNN's attention builds a graph per new shape; token-budget batches bring new shapes
    every step, so a CUDA device turns it off (mt.runtime.avoid_cudnn_attention)."""
    from mt.runtime import use_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert use_device("cuda").type == "cuda"
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(True)
        use_device("cpu")  # CPUs are left alone
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
