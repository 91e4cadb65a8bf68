"""Attention kernels: a drop-in for :func:`mt.model.attention.scaled_dot_product_attention`
that skips the weights (nobody reads them in training or search) and picks the fastest
implementation for the device and dtype.

- By default PyTorch's fused ``F.scaled_dot_product_attention`` (FlashAttention or the
  memory-efficient kernel on a GPU, a blocked kernel on a CPU): no (B, H, Tq, Tk) weights kept.
- bf16 on a CPU, while autograd records (training): the formula written out, with bf16
  products, the softmax in float32 and the dropout of :mod:`mt.kernels.dropout`. PyTorch's
  CPU flash-attention is slow in bf16 for whole sequences (its backward above all), and
  running it in float32 instead costs casts of q, k, v and the output (benchmarks/README.md).
  Without gradients (a search's step: one query position per row, or the K beams of a
  sentence as K positions) the fused kernel is the faster one, where the written-out formula
  spends its time in tiny batched products, each of a new shape for oneDNN.
- fp16 on a CPU: the fused kernel in float32 (its reduced-precision CPU kernels are slow).

Legend: B batch, H heads, Tq query length, Tk key length, Dh head dim.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mt.kernels.dropout import dropout
from mt.model.masks import with_causal


def fast_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, None]:
    """q (B, H, Tq, Dh), k, v (B, H, Tk, Dh), mask broadcastable to (B, H, Tq, Tk), True = may
    attend -> output (B, H, Tq, Dh) and no weights."""
    cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
    if cpu_bf16 and q.size(2) > 1 and torch.is_grad_enabled():
        return explicit_attention(q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    causal_only = is_causal and mask is None  # the fused kernel's own causal path
    if is_causal and mask is not None:
        mask = with_causal(mask, q.size(2), q.device)
    if q.device.type == "cpu" and q.dtype == torch.float16:
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=causal_only,
            )
        return out.to(q.dtype), None
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal_only
    )
    return out, None


def explicit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, None]:
    """The formula in the inputs' dtype (autocast off), the softmax in float32, and the cheap
    CPU dropout mask on the weights."""
    if is_causal:
        mask = with_causal(mask, q.size(2), q.device)  # (B or 1, 1, Tq, Tq)
    with torch.autocast(q.device.type, enabled=False):  # products in q's dtype
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = dropout(scores.softmax(dim=-1), dropout_p, training=dropout_p > 0)
        return weights.to(v.dtype) @ v, None
