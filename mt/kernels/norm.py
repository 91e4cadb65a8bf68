"""Layer norm that hands autocast's matrix products their dtype once: a drop-in for the
``nn.LayerNorm`` of a pre-norm sub-layer and of the final norms (``mt/kernels/__init__.py``).

Autocast computes layer norm in float32 and casts its output again in every matrix product
that reads it: a pre-norm sub-layer's norm feeds attention's three projections (q, k, v), and
the encoder's final norm feeds the key and value projections of every decoder layer. Cast once
here, the products read the very same values (the forward pass is unchanged); in backward
their gradients meet in that dtype before the one cast back to float32. Only for norms whose
output feeds matrix products alone (pre-norm): a post-norm's output is the residual stream,
which stays float32.
"""

import torch
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose output, under autocast, is already in the autocast dtype."""

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # float32 under autocast
        device = x.device.type
        if torch.is_autocast_enabled(device):
            return y.to(torch.get_autocast_dtype(device))
        return y

    @classmethod
    def like(cls, norm: nn.LayerNorm) -> "LayerNorm":
        """The same settings, sharing ``norm``'s parameters."""
        new = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
        new.weight, new.bias = norm.weight, norm.bias
        return new
