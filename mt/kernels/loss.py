"""The loss of :mod:`mt.model.loss` with its own backward: a drop-in that ``model.kernels=auto``
chooses. Same arguments, same results (tests/test_kernels.py).

The gradient with respect to the logits is ``weight * (softmax(logits) - q)`` (q the smoothed
target distribution). The (N, V) logits are the largest tensor of a step, so both passes walk
them in blocks of rows:

- forward: each block is read once (and widened to float32 when it arrives in bf16/fp16
  under autocast), its log-sum-exp, mean and target logit are taken in float32, and its
  softmax is written to a buffer in the logits' own dtype (kept for backward);
- backward: each block of that buffer becomes the gradient in place.

Why: no (N, V) float32 tensor exists at any time, where autograd over a float32 log-softmax
keeps two float32 copies of the logits (for a GPU batch of 25k tokens and a 32k vocabulary,
3.2 GB each). Under ``no_grad`` (validation) no softmax is kept at all. R-Drop's symmetric KL
(:func:`symmetric_kl`) is computed the same way, recomputing its blocks in backward.

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
    """:func:`mt.model.loss.label_smoothed_nll`, blockwise: logits (B, T, V), target (B, T)
    -> (loss_sum, nll_sum, n_tokens), 0-dim tensors (nothing here waits for the device); the
    arithmetic is float32, the gradient has the logits' dtype."""
    vocab = logits.size(-1)
    flat = logits.reshape(-1, vocab)  # (N, V)
    loss, nll = _SmoothedCrossEntropy.apply(flat, target.reshape(-1), epsilon, pad_id)
    return loss, nll, (target != pad_id).sum()


class _SymmetricKL(torch.autograd.Function):
    """(N, V) logits of two passes -> sum over real rows of (KL(p||q) + KL(q||p)) / 2.

    Walks the rows in blocks like :class:`_SmoothedCrossEntropy` and keeps nothing of size
    (N, V): backward recomputes each block's log-softmaxes from the logits (which the output
    layer produced anyway). With d = log p - log q per row, the gradients are
    ``dKL(p||q)/dz_p = p * (d - KL(p||q))``, ``dKL(q||p)/dz_p = p - q``, and the same with p and
    q swapped for z_q.
    """

    @staticmethod
    def forward(ctx, logits_p: Tensor, logits_q: Tensor, is_real: Tensor):
        n = logits_p.size(0)
        kl_pq = torch.empty(n, device=logits_p.device)  # KL(p||q) per row, (N,) float32
        kl_qp = torch.empty(n, device=logits_p.device)  # KL(q||p) per row, (N,)
        step = _block_rows(logits_p)
        for i in range(0, n, step):
            j = min(i + step, n)
            log_p, log_q, p, q = _block_log_probs(logits_p[i:j], logits_q[i:j])  # (b, V) each
            d = log_p.sub_(log_q)  # (b, V): log p - log q
            kl_pq[i:j] = (p * d).sum(-1)
            kl_qp[i:j] = -(q * d).sum(-1)
        ctx.save_for_backward(logits_p, logits_q, is_real, kl_pq, kl_qp)
        return (0.5 * (kl_pq + kl_qp)).masked_fill(~is_real, 0.0).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits_p, logits_q, is_real, kl_pq, kl_qp = ctx.saved_tensors
        weight = 0.5 * is_real.float() * grad_out.float()  # (N,): 0 at padding
        grad_p = torch.empty_like(logits_p)  # (N, V), the logits' dtype
        grad_q = torch.empty_like(logits_q)
        step = _block_rows(logits_p)
        for i in range(0, logits_p.size(0), step):
            j = min(i + step, logits_p.size(0))
            log_p, log_q, p, q = _block_log_probs(logits_p[i:j], logits_q[i:j])
            d = log_p.sub_(log_q)  # (b, V)
            w = weight[i:j, None]  # (b, 1)
            diff = p - q  # (b, V)
            grad_p[i:j] = (p * (d - kl_pq[i:j, None])).add_(diff).mul_(w)
            grad_q[i:j] = (q * (d.neg_() - kl_qp[i:j, None])).sub_(diff).mul_(w)
        return grad_p, grad_q, None


def _block_log_probs(block_p: Tensor, block_q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float32 log-softmax and softmax of two (b, V) blocks of logits."""
    log_p = torch.log_softmax(block_p.float(), dim=-1)
    log_q = torch.log_softmax(block_q.float(), dim=-1)
    return log_p, log_q, log_p.exp(), log_q.exp()


def symmetric_kl(logits_p: Tensor, logits_q: Tensor, target: Tensor, *, pad_id: int) -> Tensor:
    """:func:`mt.model.loss.symmetric_kl`, blockwise: (B, T, V) logits of the two passes and
    (B, T) target ids -> 0-dim float32 sum over real tokens; the gradients have the logits'
    dtype."""
    vocab = logits_p.size(-1)
    return _SymmetricKL.apply(
        logits_p.reshape(-1, vocab),  # (N, V)
        logits_q.reshape(-1, vocab),  # (N, V)
        target.reshape(-1) != pad_id,  # (N,)
    )
