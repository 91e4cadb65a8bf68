"""Label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4).

Returns the *sum* over real tokens and their count, so that the caller divides once by the
number of target tokens in the whole update (the same normalisation for any batching or any
number of gradient-accumulation steps).

The loss has its own backward: the gradient with respect to the logits is
``weight * (softmax(logits) - q)`` (q the smoothed target distribution). The (N, V) logits are
the largest tensor of a step, so both passes walk them in blocks of rows:

- forward: each block is read once (and widened to float32 when it arrives in bf16/fp16
  under autocast), its log-sum-exp, mean and target logit are taken in float32, and its
  softmax is written to a buffer in the logits' own dtype (kept for backward);
- backward: each block of that buffer becomes the gradient in place.

Why: no (N, V) float32 tensor exists at any time. Widening the whole bf16 logits to float32
and keeping float32 exponentials for backward cost two float32 copies of the logits (for a
GPU batch of 25k tokens and a 32k vocabulary, 3.2 GB each); now the only full-size tensor is
the softmax in the logits' dtype. On a CPU the speed is the same as the whole-tensor version
within noise (benchmarks/README.md). Under ``no_grad`` (validation) no softmax is kept at all.

Legend: B batch, T target length, N = B*T positions, V vocabulary.
"""

import torch
from torch import Tensor

# Values per block: on a CPU 2**19 float32 values (2 MiB) keep each block's temporaries in
# cache; a GPU wants few, large kernels, and blocks there bound the temporaries (256 MiB).
CPU_BLOCK_VALUES = 2**19
GPU_BLOCK_VALUES = 2**26


def _block_rows(logits: Tensor) -> int:
    values = CPU_BLOCK_VALUES if logits.device.type == "cpu" else GPU_BLOCK_VALUES
    return max(1, values // logits.size(-1))


class _SmoothedCrossEntropy(torch.autograd.Function):
    """(N, V) logits, (N,) targets -> summed smoothed loss and summed NLL over real tokens."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int):
        n, vocab = logits.shape
        keep = ctx.needs_input_grad[0]
        probs = torch.empty_like(logits) if keep else None  # (N, V), the logits' dtype
        lse = torch.empty(n, device=logits.device)  # log-sum-exp, (N,) float32
        mean = torch.empty(n, device=logits.device)  # mean logit, (N,)
        picked = torch.empty(n, device=logits.device)  # the target's logit, (N,)
        wide = keep and logits.dtype == torch.float32
        step = _block_rows(logits)
        for i in range(0, n, step):
            j = min(i + step, n)
            block = logits[i:j].float()  # (b, V) float32; a view when already float32
            peak = block.amax(dim=-1, keepdim=True)  # (b, 1), for a stable exp
            # (b, V): written straight into the kept buffer when that is float32 already
            exp = torch.sub(block, peak, out=probs[i:j] if wide else None).exp_()
            total = exp.sum(dim=-1, keepdim=True)  # (b, 1)
            lse[i:j] = (peak + total.log()).squeeze(1)
            torch.mean(block, dim=-1, out=mean[i:j])
            picked[i:j] = block.gather(1, target[i:j, None]).squeeze(1)
            if keep:
                probs[i:j] = exp.div_(total)  # softmax (a cast when the logits are narrower)
        nll = lse - picked  # -log p(target), (N,)
        smooth = lse - mean  # cross-entropy against the uniform distribution, (N,)
        is_real = target != pad_id  # (N,)
        loss = ((1.0 - epsilon) * nll + epsilon * smooth).masked_fill(~is_real, 0.0).sum()
        nll_sum = nll.masked_fill(~is_real, 0.0).sum()
        if keep:
            ctx.save_for_backward(probs, target, is_real)
        ctx.epsilon = epsilon
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        probs, target, is_real = ctx.saved_tensors
        eps, vocab = ctx.epsilon, probs.size(-1)
        weight = is_real.float() * grad_loss.float()  # (N,): 0 at padding
        floor = weight * (eps / vocab)  # (N,): the weight of the uniform part of q
        hit = weight * (eps - 1.0)  # (N,): the rest of q, at each target
        step = _block_rows(probs)
        for i in range(0, probs.size(0), step):
            j = min(i + step, probs.size(0))
            # weight * (softmax - eps / V), then weight * (eps - 1) at the target: in float32.
            block = probs[i:j].float().mul_(weight[i:j, None]).sub_(floor[i:j, None])
            block.scatter_add_(1, target[i:j, None], hit[i:j, None])
            probs[i:j] = block  # in place (a no-op copy when float32 already)
        return probs, None, None, None


def label_smoothed_nll(
    logits: Tensor, target: Tensor, *, epsilon: float, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Smoothed loss and plain NLL, both summed over non-pad tokens.

    The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly
    over the whole vocabulary (fairseq's formulation). The arithmetic is float32 whatever the
    logits' dtype (under autocast they arrive in bf16/fp16); the gradient has their dtype.

    Args:
        logits: (B, T, V); target: (B, T) ids, ``pad_id`` where there is no token.
    Returns:
        (loss_sum, nll_sum, n_tokens), all 0-dim tensors: nothing here waits for the device.
    """
    vocab = logits.size(-1)
    flat = logits.reshape(-1, vocab)  # (N, V)
    loss, nll = _SmoothedCrossEntropy.apply(flat, target.reshape(-1), epsilon, pad_id)
    return loss, nll, (target != pad_id).sum()
