"""Feed-forward block, encoder layer and decoder layer (Vaswani et al. 2017, section 3.1).

Legend: B batch, S source length, T target length, D d_model, F d_ff, H heads, Dh head dim.

``pre_norm=True`` (the default) applies layer norm before each sub-layer,
``x + Dropout(Sublayer(LayerNorm(x)))``, which trains stably without a long warm-up
(Xiong et al. 2020); ``pre_norm=False`` is the paper's ``LayerNorm(x + Dropout(Sublayer(x)))``.
"""

from torch import Tensor, nn

from mt.model.attention import KVCache, MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise ``W2 ReLU(W1 x)`` (section 3.3)."""

    def __init__(self, *, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.fc2(self.dropout(self.fc1(x).relu()))  # hidden (B, T, F)


class Residual(nn.Module):
    """Wraps a sub-layer with dropout, the residual connection and layer norm (pre or post)."""

    def __init__(self, *, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each inside a Residual."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        attention_dropout: float,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(
            d_model=d_model, n_heads=n_heads, dropout=attention_dropout
        )
        self.ff = FeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout)
        self.attn_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.ff_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        """x (B, S, D), src_mask (B, 1, 1, S) -> (B, S, D)."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask)[0])
        return self.ff_block(x, self.ff)


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder memory, feed-forward."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        attention_dropout: float,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(
            d_model=d_model, n_heads=n_heads, dropout=attention_dropout
        )
        self.cross_attn = MultiHeadAttention(
            d_model=d_model, n_heads=n_heads, dropout=attention_dropout
        )
        self.ff = FeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout)
        self.self_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.cross_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.ff_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        cache: KVCache | None = None,
        group: int = 1,
    ) -> Tensor:
        """x (B, T, D); memory_kv: keys/values of the memory (B, H, S, Dh); -> (B, T, D).

        Without ``cache``, x is the whole target prefix and a causal mask applies. With it, x is
        the newest position only (T = 1); it may attend to every cached earlier position. With
        ``group`` > 1 (a step of beam search), the memory is one per sentence (N = B / group)
        and each sentence's ``group`` rows attend to it as ``group`` query positions: the same
        attention, without a copy of the memory per beam.
        """
        if cache is None:
            x = self.self_block(x, lambda h: self.self_attn(h, is_causal=True)[0])
        else:
            x = self.self_block(x, lambda h: self.self_attn(h, cache=cache)[0])
        x = self.cross_block(x, lambda h: self.attend_memory(h, memory_kv, src_mask, group))
        return self.ff_block(x, self.ff)

    def attend_memory(
        self, h: Tensor, memory_kv: tuple[Tensor, Tensor], src_mask: Tensor, group: int
    ) -> Tensor:
        """Cross-attention of h (B, T, D) to the memory, shared by ``group`` rows at a time."""
        if group == 1:
            return self.cross_attn(h, kv=memory_kv, mask=src_mask)[0]
        b, t, d = h.shape  # each query position attends on its own: any T regroups alike
        queries = h.reshape(b // group, group * t, d)  # (N, group*T, D): a sentence's rows
        out = self.cross_attn(queries, kv=memory_kv, mask=src_mask)[0]  # (N, group*T, D)
        return out.reshape(b, t, d)
