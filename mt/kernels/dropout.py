"""Dropout (Srivastava et al. 2014) with a cheap random mask on the CPU: a drop-in for
``nn.Dropout`` that ``model.kernels=auto`` puts in its place (``mt/kernels/__init__.py``).

The CPU random generator is sequential (reproducible), so ``nn.Dropout``, which draws one
Bernoulli sample per element, is a visible part of a small model's training step on a CPU
(benchmarks/README.md). Here one 64-bit random draw gives the mask bits of 8 elements: an
element is dropped when its byte is below ``round(p * 256)``, so **the rate is rounded to a
multiple of 1/256** (0.1 -> 0.1016), and kept elements are scaled by the exact
``1 / keep_probability``. The draws come from torch's default generator, so seeding and
checkpointed RNG states cover them. Other devices use ``F.dropout`` (their generators are
parallel).

The mask is built without a bool tensor (``bytes >= threshold`` and the bool -> float
conversion after it were most of the cost): saturating uint8 arithmetic gives the 0/1 keep
flags, and multiplying those, as integers of the element's width, by the bit pattern of the
scale gives the bit pattern of the float mask (0 -> +0.0, 1 -> the scale).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The integer type of each float type's width, to build the float mask's bit patterns in.
_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def drop_threshold(p: float) -> int:
    """Random bytes below it are dropped: p in 1/256 steps, at least one byte value kept."""
    return min(round(p * 256), 255)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """A mask of ``shape`` holding 0 (dropped, probability ~p) or ``1 / keep probability``."""
    threshold = drop_threshold(p)
    n = shape.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    byte = words.view(torch.uint8)[:n].view(shape)
    # byte >= threshold -> 1, else 0: clamping from below and subtracting saturate at 0.
    kept = byte.clamp(min=threshold - 1).sub_(threshold - 1).clamp_(max=1)  # uint8 0/1
    scale = torch.tensor(256 / (256 - threshold), dtype=dtype)
    int_type = _SAME_WIDTH_INT[dtype]
    bits = int(scale.view(int_type))  # the scale's bit pattern, positive (sign bit clear)
    return kept.to(int_type).mul_(bits).view(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype not in _SAME_WIDTH_INT:
        return F.dropout(x, p, training=True)
    if drop_threshold(p) == 0:
        return x
    return x * keep_mask(x.shape, p, x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with the mask of :func:`keep_mask` on a CPU."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
