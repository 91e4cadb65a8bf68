"""Token embeddings and sinusoidal positional encoding (Vaswani et al. 2017, sections 3.4, 3.5).

Legend: B batch, T length, D d_model, V vocabulary.
"""

import math

import torch
from torch import Tensor, nn


class TokenEmbedding(nn.Module):
    """Embedding table multiplied by sqrt(D) (section 3.4).

    One table serves source, target and the output projection (the vocabulary is joint), so
    it is initialised N(0, D^-1/2): after the sqrt(D) scale the inputs have unit variance and
    the tied output layer starts with logits of unit scale.
    """

    def __init__(self, *, vocab_size: int, d_model: int, pad_id: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            self.weight[pad_id].zero_()
        self.scale = math.sqrt(d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D)."""
        return nn.functional.embedding(tokens, self.weight) * self.scale

    def logits(self, x: Tensor) -> Tensor:
        """Tied output layer: (B, T, D) -> (B, T, V)."""
        return x @ self.weight.t()


def sinusoidal_table(max_positions: int, d_model: int) -> Tensor:
    """(max_positions, D): PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...)."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )  # (D/2,)
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to the embeddings, then dropout (section 3.5).

    Follows the paper exactly (interleaved sin/cos); positions start at 0 for the first token.
    """

    def __init__(self, *, d_model: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """(B, T, D) -> (B, T, D); ``offset`` is the position of x's first token."""
        length = x.size(1)
        if offset + length > self.table.size(0):
            raise ValueError(
                f"sequence of {offset + length} tokens is longer than model.max_positions="
                f"{self.table.size(0)}: shorten the input or train with a larger max_positions"
            )
        return self.dropout(x + self.table[offset : offset + length])
