"""Several models searched as one (``checkpoint=[a.pt,b.pt]``): at every step of greedy or beam
search, the mean of their next-token probabilities (as fairseq and Marian ensemble).

Legend: B batch, V vocabulary, M models.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class EnsembleState:
    """One decoder state per model, reordered together."""

    states: list

    def index_select(self, index: Tensor, *, memory: bool = True) -> None:
        for state in self.states:
            state.index_select(index, memory=memory)


class Ensemble(nn.Module):
    """The search protocol of mt/decoding/search.py over M models that share a vocabulary.

    ``decode_step`` returns log(mean_m p_m(token)): log-probabilities, which the searches treat
    as logits (a softmax of them gives the mean distribution back)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.max_positions = min(m.max_positions for m in models)
        self.pad_id = models[0].pad_id

    def encode(self, src: Tensor, src_mask: Tensor) -> list[Tensor]:
        return [m.encode(src, src_mask) for m in self.members]  # M x (B, S, D)

    def init_state(self, memory: list[Tensor], src_mask: Tensor, group: int = 1) -> EnsembleState:
        return EnsembleState(
            [m.init_state(x, src_mask, group) for m, x in zip(self.members, memory)]
        )

    def decode_step(self, tokens: Tensor, state: EnsembleState) -> Tensor:
        log_probs = torch.stack(
            [
                m.decode_step(tokens, s).float().log_softmax(-1)
                for m, s in zip(self.members, state.states)
            ]
        )  # (M, B, V)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))  # (B, V)
