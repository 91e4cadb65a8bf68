"""Sampling the next token instead of taking the most probable one (``decode.sampling=true``):
top-k (Fan et al. 2018), nucleus / top-p (Holtzman et al. 2020) and a temperature, as used for
back-translation (Edunov et al. 2018). Reproducible: the draws come from one seeded generator.
"""

import torch
from torch import Tensor


class Sampler:
    """logits (b, V) -> one drawn token per row (b,)."""

    def __init__(
        self, *, top_k: int, top_p: float, temperature: float, generator: torch.Generator
    ) -> None:
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature
        self.generator = generator

    def __call__(self, logits: Tensor) -> Tensor:
        logits = logits.float() / self.temperature
        if self.top_k > 0:  # keep the k most probable (ties with the k-th included)
            kth = logits.topk(min(self.top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if self.top_p < 1.0:  # keep the smallest set whose probability reaches top_p
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            beyond = probs.cumsum(dim=-1) - probs >= self.top_p  # the first is always kept
            logits = logits.scatter(-1, order, ordered.masked_fill(beyond, -torch.inf))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
