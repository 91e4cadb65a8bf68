"""The fast paths, and the one switch that picks them (``model.kernels``).

``plain``: the model runs exactly as written in ``mt/model/`` (``nn.Dropout``, attention as the
formula, the loss through autograd). ``auto`` (the default): each of these is replaced by its
kernel, which computes the same function faster or in less memory:

============================  ===========================================================
plain (mt/model/)             kernel (mt/kernels/)
============================  ===========================================================
``nn.Dropout``                :class:`~mt.kernels.dropout.Dropout`: integer masks on a CPU
                              (the rate rounded to a multiple of 1/256)
``scaled_dot_product_attention``  :func:`~mt.kernels.attention.fast_attention`: fused SDPA,
                              or bf16 products written out on a CPU (but for a single
                              query position); no weights kept
``model.loss``                :mod:`mt.kernels.loss`: blockwise, its own backward
``nn.Linear``, the tied       :class:`~mt.kernels.packed.PackedLinear`,
output layer, attention's     :class:`~mt.kernels.packed.PackedTokenEmbedding`, ``Packed``
projections, feed-forward     ``MultiHeadAttention`` / ``FeedForward``: weights packed once
(bf16 copy for search, on a   for oneDNN, q/k/v one product, ReLU inside the product
CPU)                          (mt/decoding/precision.py)
============================  ===========================================================

tests/test_kernels.py holds each kernel equal to its plain counterpart, forward and gradients.
Speed with and without them: benchmarks/README.md.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from mt.checks import check_kernels
from mt.kernels import loss as fast_loss
from mt.kernels.attention import fast_attention
from mt.kernels.dropout import Dropout
from mt.model import loss as plain_loss
from mt.model.attention import MultiHeadAttention, scaled_dot_product_attention


def use_kernels(model: nn.Module, kernels: str) -> nn.Module:
    """Put the kernels of ``kernels`` into ``model`` in place (or the plain functions back);
    returns ``model``. Parameters and state dict are untouched."""
    check_kernels(kernels)
    fast = kernels == "auto"
    for module in list(model.modules()):
        if isinstance(module, MultiHeadAttention):
            module.attention = fast_attention if fast else scaled_dot_product_attention
        for child_name, child in module.named_children():
            if fast and type(child) is nn.Dropout:
                setattr(module, child_name, Dropout(child.p))
            elif not fast and type(child) is Dropout:
                setattr(module, child_name, nn.Dropout(child.p))
    return model


def kernels_of(model: nn.Module) -> str:
    """``auto`` when :func:`use_kernels` put the kernels into ``model`` (or into any model it
    holds, e.g. an ensemble's), else ``plain``."""
    for module in model.modules():
        if isinstance(module, MultiHeadAttention) and module.attention is fast_attention:
            return "auto"
    return "plain"


@dataclass(frozen=True)
class LossFunctions:
    """The training objective's two parts, with :mod:`mt.model.loss`'s signatures."""

    label_smoothed_nll: Callable[..., tuple[Tensor, Tensor, Tensor]]
    symmetric_kl: Callable[..., Tensor]


def loss_functions(kernels: str) -> LossFunctions:
    check_kernels(kernels)
    impl = fast_loss if kernels == "auto" else plain_loss
    return LossFunctions(impl.label_smoothed_nll, impl.symmetric_kl)
