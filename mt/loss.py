"""Label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4).

Returns the *sum* over real tokens and their count, so that the caller divides once by the
number of target tokens in the whole update (the same normalisation for any batching or any
number of gradient-accumulation steps).

Legend: B batch, T target length, V vocabulary.
"""

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_nll(
    logits: Tensor, target: Tensor, *, epsilon: float, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Smoothed loss and plain NLL, both summed over non-pad tokens.

    The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly
    over the whole vocabulary (fairseq's formulation).

    Args:
        logits: (B, T, V); target: (B, T) ids, ``pad_id`` where there is no token.
    Returns:
        (loss_sum, nll_sum, n_tokens), all 0-dim tensors: nothing here waits for the device.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    is_real = target != pad_id  # (B, T)
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
    smooth = -log_probs.mean(dim=-1)  # (B, T): cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    loss = loss.masked_fill(~is_real, 0.0)
    nll = nll.masked_fill(~is_real, 0.0)
    return loss.sum(), nll.sum(), is_real.sum()
