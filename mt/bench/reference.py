"""The yardstick of the training benchmark: ``torch.nn.Transformer`` with the same sizes, and our
embeddings and tied output layer, so that the two differ only in the layers themselves.

Legend: B batch, S source length, T target length, V vocabulary.
"""

from torch import Tensor, nn

from mt.model.embeddings import PositionalEncoding, TokenEmbedding
from mt.model.masks import causal_mask
from mt.model.transformer import Transformer


class ReferenceTransformer(nn.Module):
    """``torch.nn.Transformer`` wrapped with our embeddings and tied output layer."""

    def __init__(
        self, ours: Transformer, *, n_heads: int, d_ff: int, dropout: float, pre_norm: bool
    ) -> None:
        super().__init__()
        d_model = ours.embed.weight.size(1)
        self.pad_id = ours.pad_id
        self.embed = TokenEmbedding(
            vocab_size=ours.embed.weight.size(0), d_model=d_model, pad_id=ours.pad_id
        )
        self.pos = PositionalEncoding(
            d_model=d_model, max_positions=ours.max_positions, dropout=dropout
        )
        self.core = nn.Transformer(
            d_model=d_model,
            nhead=n_heads,
            num_encoder_layers=len(ours.encoder_layers),
            num_decoder_layers=len(ours.decoder_layers),
            dim_feedforward=d_ff,
            dropout=dropout,
            batch_first=True,
            norm_first=pre_norm,
        )

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        t = tgt_in.size(1)
        causal = ~causal_mask(t, src.device)[0, 0]  # nn.Transformer: True = may NOT attend
        hidden = self.core(
            self.pos(self.embed(src)),
            self.pos(self.embed(tgt_in)),
            tgt_mask=causal,
            src_key_padding_mask=src == self.pad_id,
            memory_key_padding_mask=src == self.pad_id,
            tgt_is_causal=True,
        )
        return self.embed.logits(hidden)
