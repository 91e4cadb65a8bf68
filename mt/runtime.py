"""Where and how reproducibly code runs: device choice, host memory and seeding."""

import ctypes
import ctypes.util
import functools
import math
import os
import random
import sys
import time
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` autocast on a CUDA GPU that supports it, or on a CPU whose bf16
    matrix multiplies are clearly faster than fp32 ones (:func:`cpu_bf16_is_fast`); else
    ``fp32``.

    Why measure on CPUs: with bf16 dot-product units (AVX512-BF16, AMX) bf16 trains much faster;
    without them the casts cost more than the emulated bf16 matmuls save (benchmarks/README.md
    has both). Weights, optimizer state and the loss stay fp32 either way. fp16 is never
    chosen automatically: it needs a loss scaler and can still overflow.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_bf16_is_fast():
        return "bf16"
    return "fp32"


BF16_MIN_SPEEDUP = 1.5
"""bf16 must multiply matrices this much faster than fp32 to be chosen: CPUs with bf16 units
are well above it, those without below 1 (benchmarks/README.md), so timing noise cannot flip
the choice."""


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices at least ``BF16_MIN_SPEEDUP`` times faster than
    fp32 ones, timed once per process (~0.1-0.5 s). No CPU flag says which kernels oneDNN will
    pick (AVX512-BF16, AMX, ARM's BF16, or emulation), so this is measured, not looked up."""
    fp32 = matmul_seconds(torch.float32)
    return fp32 >= BF16_MIN_SPEEDUP * matmul_seconds(torch.bfloat16)


def matmul_seconds(
    dtype: torch.dtype,
    size: int = 1024,
    repeats: int = 3,
    device: torch.device | None = None,
) -> float:
    """Best-of-``repeats`` seconds of one (size x size) @ (size x size) multiply on ``device``
    (the CPU by default; synchronised on a GPU)."""
    device = device or torch.device("cpu")
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # first call: kernel selection and buffers
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


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


def use_device(name: str) -> torch.device:
    """:func:`resolve_device`; on a CPU, also :func:`keep_freed_memory` and
    :func:`bound_onednn_caches`; on a GPU, :func:`avoid_cudnn_attention`."""
    device = resolve_device(name)
    if device.type == "cpu":
        keep_freed_memory()
        bound_onednn_caches()
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


# Entries kept by each of oneDNN's two shape-keyed caches (below): enough to train as fast as
# the defaults, with flat resident memory (benchmarks/README.md).
ONEDNN_CACHE_CAPACITY = 16
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> dict[str, str]:
    """Cap the caches of compiled oneDNN primitives that PyTorch keeps per matrix shape.

    Why: on a CPU, bf16 matrix multiplies run through oneDNN, which keeps each shape's
    primitive in its own cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and in PyTorch's ideep
    cache (``LRU_CACHE_CAPACITY``), 1,024 entries each by default and megabytes an entry.
    Token-budget batches have a new number of rows almost every step, so both caches fill
    with entries that are rarely used again, and resident memory of a bf16 training run grows
    without a plateau; capped, it stays flat at the same speed (benchmarks/README.md). fp32
    matmuls do not go through these caches.
    A value the user has set in the environment is kept. Both are read when oneDNN first
    builds a primitive, so this must run before the process's first bf16 matmul.

    Returns the two settings in force.
    """
    for name in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in ONEDNN_CACHE_VARIABLES}


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
