"""Dropout (Srivastava et al. 2014) with a cheap random mask on the CPU.

The CPU random generator is sequential (reproducible), so ``nn.Dropout``, which draws one
Bernoulli sample per element, took about a fifth of a tiny-model training step on 2 cores. Here
one 64-bit random draw gives the mask bits of 8 elements: an element is dropped when its byte is
below ``round(p * 256)``, i.e. the rate is rounded to a multiple of 1/256 (0.1 -> 0.1016), and
kept elements are scaled by the exact ``1 / keep_probability``. The draws come from torch's
default generator, so seeding and checkpointed RNG states cover them. Other devices use
``F.dropout`` (their generators are parallel).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    threshold = round(p * 256)  # bytes below it are dropped
    if threshold == 0:
        return x
    n = x.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    keep = words.view(torch.uint8)[:n].view(x.shape) >= threshold
    return x * keep.to(x.dtype).mul_(256 / (256 - threshold))


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
