"""The training objective: label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al.
2017, section 5.4), and R-Drop's symmetric KL between two dropout passes (Liang et al. 2021).

Plain PyTorch with autograd. ``mt/kernels/loss.py`` computes the same with its own backward and
less memory; ``model.kernels`` chooses. Both return *sums* over real tokens, so that the caller
divides once by the number of target tokens in the whole update (the same normalisation for any
batching or any number of gradient-accumulation steps).

Legend: B batch, T target length, V vocabulary.
"""

from torch import Tensor


def label_smoothed_nll(
    logits: Tensor, target: Tensor, *, epsilon: float, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Smoothed loss and plain NLL, both summed over non-pad tokens.

    The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly
    over the whole vocabulary (fairseq's formulation). The arithmetic is float32 whatever the
    logits' dtype (under autocast they arrive in bf16/fp16).

    Args:
        logits: (B, T, V); target: (B, T) ids, ``pad_id`` where there is no token.
    Returns:
        (loss_sum, nll_sum, n_tokens), all 0-dim tensors; nll_sum carries no gradient.
    """
    log_probs = logits.float().log_softmax(dim=-1)  # (B, T, V)
    nll = -log_probs.gather(-1, target[..., None]).squeeze(-1)  # (B, T): -log p(reference)
    uniform = -log_probs.mean(dim=-1)  # (B, T): cross-entropy against the uniform distribution
    is_pad = target == pad_id  # (B, T)
    loss = ((1.0 - epsilon) * nll + epsilon * uniform).masked_fill(is_pad, 0.0).sum()
    return loss, nll.detach().masked_fill(is_pad, 0.0).sum(), (~is_pad).sum()


def symmetric_kl(logits_p: Tensor, logits_q: Tensor, target: Tensor, *, pad_id: int) -> Tensor:
    """The R-Drop consistency term (Liang et al. 2021, eq. 2), summed over non-pad tokens.

    Two forward passes of one batch under different dropout masks should predict the same
    distribution; penalising their symmetric KL divergence regularises a model that overfits a
    small corpus, at the cost of a second forward and backward pass per update.

    Args:
        logits_p, logits_q: (B, T, V), the two passes; target: (B, T) ids (for the padding).
    Returns:
        0-dim tensor: sum over real tokens of (KL(p||q) + KL(q||p)) / 2, float32.
    """
    log_p = logits_p.float().log_softmax(dim=-1)  # (B, T, V)
    log_q = logits_q.float().log_softmax(dim=-1)
    diff = log_p - log_q  # (B, T, V)
    kl_pq = (log_p.exp() * diff).sum(-1)  # (B, T)
    kl_qp = -(log_q.exp() * diff).sum(-1)
    return (0.5 * (kl_pq + kl_qp)).masked_fill(target == pad_id, 0.0).sum()
