"""The only place that builds attention masks.

One polarity everywhere: a boolean mask where True means "may attend", broadcastable to the
attention scores ``(B, H, Tq, Tk)``. Tensors where True means padding are named ``*_is_pad``.

Legend: B batch, S source length, T target length.
"""

import torch
from torch import Tensor


def padding_mask(is_pad: Tensor) -> Tensor:
    """Key mask from padding flags.

    Args:
        is_pad: (B, S) True at padding positions.
    Returns:
        (B, 1, 1, S) True where the key is a real token.
    """
    return ~is_pad[:, None, None, :]  # (B, 1, 1, S)


def with_causal(mask: Tensor | None, length: int, device: torch.device) -> Tensor:
    """``mask`` (broadcastable to (B, H, T, T)) and the causal mask of ``length`` positions."""
    causal = causal_mask(length, device)  # (1, 1, T, T)
    return causal if mask is None else mask & causal


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """(1, 1, T, T) True on and below the diagonal: position t may attend to positions <= t."""
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    return torch.tril(ones)[None, None]  # (1, 1, T, T)
