"""Label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4).

Returns the *sum* over real tokens and their count, so that the caller divides once by the
number of target tokens in the whole update (the same normalisation for any batching or any
number of gradient-accumulation steps).

The loss has its own backward: the gradient with respect to the logits is
``softmax(logits) - q`` (q the smoothed target distribution). The forward pass keeps the
exponentiated logits it computes for the normaliser anyway, and the backward turns them into
the gradient in place: two passes over the (N, V) logits and no new (N, V) tensor. Composed
from log_softmax, gather and mean, autograd would make several full-size passes and
temporaries; on a CPU that was about a quarter of a training step.

Legend: B batch, T target length, N = B*T positions, V vocabulary.
"""

import torch
from torch import Tensor


class _SmoothedCrossEntropy(torch.autograd.Function):
    """(N, V) logits, (N,) targets -> summed smoothed loss and summed NLL over real tokens."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int):
        peak = logits.amax(dim=-1, keepdim=True)  # (N, 1), for a stable exp
        exp = torch.sub(logits, peak).exp_()  # (N, V), kept for backward
        total = exp.sum(dim=-1)  # (N,)
        lse = peak.squeeze(1) + total.log()  # log-sum-exp, (N,)
        nll = lse - logits.gather(1, target[:, None]).squeeze(1)  # -log p(target), (N,)
        smooth = lse - logits.mean(dim=-1)  # cross-entropy against the uniform distribution
        is_real = target != pad_id  # (N,)
        loss = ((1.0 - epsilon) * nll + epsilon * smooth).masked_fill(~is_real, 0.0).sum()
        nll_sum = nll.masked_fill(~is_real, 0.0).sum()
        ctx.save_for_backward(exp, total, target, is_real)
        ctx.epsilon = epsilon
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        exp, total, target, is_real = ctx.saved_tensors
        eps, vocab = ctx.epsilon, exp.size(-1)
        weight = is_real.to(exp.dtype) * grad_loss  # (N,): 0 at padding
        # weight * (softmax - eps / V), then weight * (eps - 1) at each target: in place.
        grad = exp.mul_((weight / total)[:, None]).sub_((weight * (eps / vocab))[:, None])
        grad.scatter_add_(1, target[:, None], (weight * (eps - 1.0))[:, None])
        return grad, None, None, None


def label_smoothed_nll(
    logits: Tensor, target: Tensor, *, epsilon: float, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Smoothed loss and plain NLL, both summed over non-pad tokens.

    The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly
    over the whole vocabulary (fairseq's formulation). Logits are used in float32 (under
    autocast they may arrive in bf16/fp16).

    Args:
        logits: (B, T, V); target: (B, T) ids, ``pad_id`` where there is no token.
    Returns:
        (loss_sum, nll_sum, n_tokens), all 0-dim tensors: nothing here waits for the device.
    """
    vocab = logits.size(-1)
    flat = logits.reshape(-1, vocab).float()  # (N, V)
    loss, nll = _SmoothedCrossEntropy.apply(flat, target.reshape(-1), epsilon, pad_id)
    return loss, nll, (target != pad_id).sum()
