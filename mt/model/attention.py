"""Scaled dot-product attention and multi-head attention (Vaswani et al. 2017, section 3.2).

Legend: B batch, H heads, Tq query length, Tk key length, D d_model, Dh head dim (D / H).

This is the formula as written, ``softmax(Q K^T / sqrt(Dh)) V``. A faster function with the same
signature (``mt/kernels/attention.py``) can take its place in each layer: ``model.kernels``
chooses, and the weights are always computed here when someone asks to see them.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.model.masks import with_causal

# (q, k, v, *, mask, is_causal, dropout_p) -> (output, weights or None)
AttentionFunction = Callable[..., tuple[Tensor, Tensor | None]]


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``softmax(q k^T / sqrt(Dh)) v`` (section 3.2.1).

    The scores and the softmax are float32 whatever the inputs' dtype: in bf16 the softmax of
    ~20 scores would keep only 2-3 significant digits per weight.

    Args:
        q: (B, H, Tq, Dh); k, v: (B, H, Tk, Dh).
        mask: bool, broadcastable to (B, H, Tq, Tk); True = may attend.
        is_causal: also forbid attending to later positions (decoder self-attention).
        dropout_p: dropout on the attention weights (training only).
    Returns:
        output (B, H, Tq, Dh) in v's dtype and weights (B, H, Tq, Tk) in float32, each row
        summing to 1.
    """
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    if is_causal:
        mask = with_causal(mask, q.size(2), q.device)  # (B or 1, 1, Tq, Tq)
    if mask is not None:
        # The dtype's minimum, not -1e9: exact zeros after softmax, and no NaN in a row with
        # no key to attend to.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, dropout_p, training=dropout_p > 0)
    return dropped.to(v.dtype) @ v, weights


class KVCache:
    """Keys and values of the tokens decoded so far, for one self-attention layer.

    Step-by-step decoding appends one position per step instead of recomputing the past.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, H, t, Dh)
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)  # (B, H, t+1, Dh)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def index_select(self, index: Tensor) -> None:
        """Keep/reorder batch rows (beam search reordering, dropping finished sentences)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """H attention heads over learned projections of queries, keys and values (section 3.2.2).

    ``attention`` is the function that attends (the plain one above unless a kernel replaced
    it); with ``need_weights`` set (see :func:`capture_attention`) the plain one always runs,
    so that the weights exist.
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.attention: AttentionFunction = scaled_dot_product_attention
        self.need_weights = False

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Tk, D) -> keys, values (B, H, Tk, Dh): done once per sentence for memory."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> queries, keys, values (B, H, T, Dh): self-attention's projections."""
        return self.split_heads(self.q_proj(x)), *self.project_kv(x)

    def forward(
        self,
        query: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        kv: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, Tq, D) to keys/values.

        Keys/values come from ``kv`` (already projected with :meth:`project_kv`: the encoder
        memory, once per batch), else from ``query`` itself (self-attention). With ``cache``
        the new positions' keys/values are appended to those of earlier steps.

        Returns:
            output (B, Tq, D) and weights (B, H, Tq, Tk) when ``need_weights``, else None.
        """
        if kv is None:
            q, k, v = self.project_qkv(query)  # (B, H, Tq, Dh) each
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H, t, Dh): all steps so far
        else:
            q, (k, v) = self.split_heads(self.q_proj(query)), kv  # q (B, H, Tq, Dh)
        attend = scaled_dot_product_attention if self.need_weights else self.attention
        dropout_p = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p)
        b, _, tq, _ = out.shape
        out = out.transpose(1, 2).reshape(b, tq, self.n_heads * self.head_dim)  # (B, Tq, D)
        return self.out_proj(out), weights if self.need_weights else None


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Record the attention weights of every MultiHeadAttention in ``model``.

    Yields a dict from module name (e.g. ``decoder_layers.2.cross_attn``) to the list of weights
    (B, H, Tq, Tk) it produced, one per call, in call order::

        with capture_attention(model) as weights:
            model(src, tgt_in)
        cross = weights["decoder_layers.0.cross_attn"][0]
    """
    records: dict[str, list[Tensor]] = {}
    handles = []
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    for name, module in modules:
        module.need_weights = True

        def hook(_module, _inputs, output, name=name):
            records.setdefault(name, []).append(output[1].detach())

        handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for _, module in modules:
            module.need_weights = False
