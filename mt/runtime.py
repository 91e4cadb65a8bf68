"""Where and how reproducibly code runs: device choice, host memory and seeding."""

import ctypes
import ctypes.util
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mt.cpu import has_bf16_vector_products


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available; use cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from None


AUTO_MARGIN = 1.05
"""``auto`` picks bf16 only when it runs the probe at least this much faster than fp32: fp32
wins ties, so timing noise cannot make ``auto`` slower than fp32."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision=auto`` chose, and the probe's best seconds in each candidate."""

    precision: str
    seconds: dict[str, float]

    def describe(self) -> str:
        timed = ", ".join(f"{p} {s * 1e3:.1f} ms" for p, s in self.seconds.items())
        return f"{self.precision} (probe: {timed})"

    def report(self) -> dict:
        """For benchmark JSON: the choice, each candidate's ms, and fp32's time over the
        choice's (>= 1: never slower than fp32)."""
        ms = {p: round(s * 1e3, 2) for p, s in self.seconds.items()}
        fp32 = self.seconds.get("fp32", self.seconds[self.precision])
        speedup = round(fp32 / self.seconds[self.precision], 3)
        return {"chosen": self.precision, "probe_ms": ms, "probe_speedup_vs_fp32": speedup}


def auto_candidates(device: torch.device) -> list[str]:
    """What ``auto`` chooses among: fp32, and bf16 where the device computes in it: a CUDA GPU
    that supports it; a CPU with vector bf16 kernels (mt/cpu.py, from its flags and oneDNN's
    ISA limit, so the same on a busy machine). With bf16 units (AVX512-BF16, AMX, ARM's BF16)
    bf16 is fast, with AVX-512 alone somewhat slower than fp32, and the probe tells which; with
    AVX2 alone it is many times slower and not even timed. fp16 is never chosen automatically:
    it needs a loss scaler and can still overflow."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return ["fp32", "bf16"]
    if device.type == "cpu" and has_bf16_vector_products():
        return ["fp32", "bf16"]
    return ["fp32"]


def choose_by_timing(
    probes: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int = 3,
    budget_s: float = 1.0,
) -> PrecisionChoice:
    """The fastest of ``probes`` (precision -> a few real steps in it), fp32 first and winning
    ties (:data:`AUTO_MARGIN`). Each probe runs once untimed (kernel selection, buffers), then
    all alternate for ``repeats`` rounds, fewer when ``budget_s`` runs out (at least one);
    each keeps its best round."""
    best = dict.fromkeys(probes, math.inf)
    for probe in probes.values():
        probe()
    start = time.perf_counter()
    for _ in range(repeats):
        for precision, probe in probes.items():
            sync(device)
            begin = time.perf_counter()
            probe()
            sync(device)
            best[precision] = min(best[precision], time.perf_counter() - begin)
        if time.perf_counter() - start > budget_s:
            break
    chosen = "fp32" if "fp32" in best else next(iter(best))
    for precision, seconds in best.items():
        if seconds * AUTO_MARGIN < best[chosen]:
            chosen = precision
    return PrecisionChoice(chosen, best)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (GPU); a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved precision runs its matmuls in."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The forward pass's context for a resolved precision: autocast to bf16/fp16, or nothing."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=precision_dtype(precision))


# Entries kept by each of oneDNN's two shape-keyed caches (below). Training: enough to train as
# fast as the defaults, with flat resident memory; its batches bring new shapes all the time.
# Decoding: its bf16 products pad their rows to a few sizes (mt/kernels/packed.py), which a few
# hundred entries hold, nearly all built in a search's first batches (benchmarks/README.md).
ONEDNN_CACHE_CAPACITY = 16
DECODING_ONEDNN_CACHE_CAPACITY = 256
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
# Set in the environment when the capacities above are mt's own choice, not the user's: a child
# process (e.g. the benchmark's decoding contestants) inherits them and may choose its own.
ONEDNN_CACHE_CHOSEN_BY_MT = "MT_ONEDNN_CACHE_CHOSEN"


def use_device(name: str, *, onednn_cache: int = ONEDNN_CACHE_CAPACITY) -> torch.device:
    """:func:`resolve_device`; on a CPU, also :func:`keep_freed_memory` and
    :func:`bound_onednn_caches` to ``onednn_cache`` entries (training's
    :data:`ONEDNN_CACHE_CAPACITY` by default); on a GPU, :func:`avoid_cudnn_attention`."""
    device = resolve_device(name)
    if device.type == "cpu":
        keep_freed_memory()
        bound_onednn_caches(onednn_cache)
    elif device.type == "cuda":
        avoid_cudnn_attention()
    return device


def avoid_cudnn_attention() -> None:
    """Let ``scaled_dot_product_attention`` choose among FlashAttention, the memory-efficient
    kernel and the plain one, but not cuDNN's.

    Why: recent PyTorch tries cuDNN's attention first on Hopper and Blackwell GPUs, and cuDNN
    builds an execution graph for every new combination of tensor shapes, forward and backward
    (tens to hundreds of milliseconds each; PyTorch caches them per shape). Token-budget batches
    of a translation corpus have a new (batch size, source length, target length) almost every
    step, so training would pay for new graphs at nearly every step while the GPU waits. The
    other kernels need no per-shape setup. The profile that showed it, and what is still to be
    measured: benchmarks/README.md, "On a GPU".
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def bound_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> dict[str, str]:
    """Cap the caches of compiled oneDNN primitives that PyTorch keeps per matrix shape.

    Why: on a CPU, bf16 matrix multiplies run through oneDNN, which keeps each shape's
    primitive in its own cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and in PyTorch's ideep
    cache (``LRU_CACHE_CAPACITY``), 1,024 entries each by default and megabytes an entry.
    Token-budget batches have a new number of rows almost every step, so both caches fill
    with entries that are rarely used again, and resident memory of a bf16 training run grows
    without a plateau; capped, it stays flat at the same speed (benchmarks/README.md). fp32
    matmuls do not go through these caches. Building a primitive costs milliseconds, so where
    the same shapes come back (a search's padded rows) more entries pay: decoding processes
    ask for :data:`DECODING_ONEDNN_CACHE_CAPACITY`.
    A value the user has set in the environment is kept (one inherited from an mt process is
    mt's, and replaced). Both are read when oneDNN first builds a primitive, so this must run
    before the process's first bf16 matmul.

    Returns the two settings in force.
    """
    ours = set(os.environ.get(ONEDNN_CACHE_CHOSEN_BY_MT, "").split(",")) - {""}
    for name in ONEDNN_CACHE_VARIABLES:
        if name not in os.environ or name in ours:
            os.environ[name] = str(capacity)
            ours.add(name)
    if ours:
        os.environ[ONEDNN_CACHE_CHOSEN_BY_MT] = ",".join(sorted(ours))
    return onednn_caches()


def onednn_caches() -> dict[str, str | None]:
    """The two cache capacities in this process's environment (None: oneDNN's default)."""
    return {name: os.environ.get(name) for name in ONEDNN_CACHE_VARIABLES}


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the system.

    Why: PyTorch's CPU allocator calls malloc/free directly, and every training step allocates
    and frees the same large tensors (the (N, V) logits, their gradient: ~100 MB each for 4k
    tokens and 8k subwords). glibc serves blocks of more than a few MB with fresh ``mmap``
    pages and unmaps them on ``free``, so each step faults every 4 KB page in again, a visible
    share of a small model's step on a CPU (benchmarks/README.md).
    Serving large blocks from the heap and never trimming it makes them reused in place; the
    process keeps its peak resident memory instead of shrinking between steps. Linux with glibc
    only: elsewhere nothing changes and False is returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def forked_rng(device: torch.device):
    """The random streams forked for work that must not draw from the run's (timing probes,
    models built only to be timed): CPU, and ``device`` when it is a GPU."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
