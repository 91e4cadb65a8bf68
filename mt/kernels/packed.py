"""Linear layers with their weights packed once for oneDNN's matrix kernels: a drop-in for
``nn.Linear`` (and for the tied output layer of the token embedding) in a bf16 copy of the
model that only translates (mt/decoding/precision.py).

oneDNN multiplies in a blocked weight layout of its own (the one its AVX512-BF16 or AMX
kernels read). A plain ``nn.Linear`` hands it the weight row-major, so every call reorders it;
packed once (``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile``'s freezing
does for a CPU), a call only multiplies (``_linear_pointwise``). The product is the same up to
the order of the float32 accumulation. Inference only: packed weights have no gradient, and an
opaque layout that cannot be copied or saved.

oneDNN builds (JIT-compiles) a kernel for every new number of rows, which costs many times the
product of a decode step, and a search meets a new number at almost every step as sentences
finish. So the rows are padded up to one of a few sizes per power of two (:func:`bucket_rows`),
whose kernels its cache keeps.

A oneDNN call costs about the same for a decode step's few rows whatever its width, so the
copy's attention makes one product of a self-attention's three projections (and of the memory's
keys and values), and its feed-forward block applies ReLU inside the first product.
"""

import functools

import torch
from torch import Tensor, nn

from mt.model.attention import MultiHeadAttention
from mt.model.embeddings import TokenEmbedding
from mt.model.layers import FeedForward


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this PyTorch packs ``dtype`` weights for oneDNN on ``device``: bf16 on a CPU
    whose vector units oneDNN's bf16 kernels need (AVX-512 or AVX-NE-CONVERT; not AVX2 alone)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and _cpu_packs_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_packs_bf16() -> bool:
    """Tried once per process on a tiny weight: no flag says which kernels oneDNN has here."""
    ops = torch.ops.mkldnn
    if not (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    ):
        return False
    try:
        PackedLinear(nn.Linear(8, 8).to(torch.bfloat16))(torch.ones(2, 8, dtype=torch.bfloat16))
    except RuntimeError:  # e.g. "bf16 path needs the cpu support ... avx512bw"
        return False
    return True


MIN_ROWS = 16  # the rows of an AMX tile; fewer cost the same


def bucket_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of 1/16 of its power of two, and of 16: eight sizes
    per octave (at most 1/8 more rows) from 128 rows on, multiples of 16 below."""
    step = max(MIN_ROWS, 1 << max(rows.bit_length() - 4, 0))
    return -(-rows // step) * step


def packed_product(
    x: Tensor, packed: Tensor, bias: Tensor | None, activation: str = "none"
) -> Tensor:
    """x (..., in) times a packed weight (out, in), plus ``bias``, then ``activation`` ("none"
    or "relu", applied by oneDNN as it writes the result) -> (..., out). The rows are padded to
    :func:`bucket_rows` for the product (padding rows are zeros, their results dropped)."""
    rows = x.numel() // x.size(-1)
    flat = x.reshape(rows, x.size(-1))  # (rows, in)
    if rows and (padded := bucket_rows(rows)) != rows:
        flat = nn.functional.pad(flat, (0, 0, 0, padded - rows))  # (padded, in)
    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, activation, [], "")  # (padded, out)
    return y[:rows].view(*x.shape[:-1], y.size(-1))


class PackedLinear(nn.Module):
    """``linear``'s function, its weight (out, in) packed for oneDNN, then ``activation``
    ("none" or "relu"); x (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear, activation: str = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation = activation
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        return packed_product(x, self.packed, self.bias, self.activation)

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", then {self.activation}"
        return f"in_features={self.in_features}, out_features={self.out_features}, packed{act}"


def stacked(*linears: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` computing ``linears`` side by side: their outputs concatenated."""
    weight = torch.cat([lin.weight.detach() for lin in linears])  # (sum of outs, in)
    bias = torch.cat(
        [torch.zeros_like(lin.weight[:, 0]) if lin.bias is None else lin.bias for lin in linears]
    )
    joint = nn.Linear(weight.size(1), weight.size(0), device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        joint.weight.copy_(weight)
        joint.bias.copy_(bias)
    return joint


class PackedMultiHeadAttention(MultiHeadAttention):
    """``attention`` with packed projections: self-attention's q, k and v are one product of
    the stacked weights (3D, D), the memory's keys and values one of (2D, D); queries of
    cross-attention and the output projection as they are. Inference only."""

    def __init__(self, attention: MultiHeadAttention) -> None:
        nn.Module.__init__(self)
        self.n_heads, self.head_dim = attention.n_heads, attention.head_dim
        self.dropout = attention.dropout
        self.attention, self.need_weights = attention.attention, attention.need_weights
        q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
        self.q_proj, self.out_proj = PackedLinear(q), PackedLinear(attention.out_proj)
        self.qkv_proj, self.kv_proj = PackedLinear(stacked(q, k, v)), PackedLinear(stacked(k, v))

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv_proj(x).chunk(2, dim=-1)  # (B, Tk, D) each, views of one product
        return self.split_heads(k), self.split_heads(v)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)  # (B, T, D) each
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)


class PackedFeedForward(FeedForward):
    """``ff`` with packed products and ReLU applied inside the first; no dropout (inference)."""

    def __init__(self, ff: FeedForward) -> None:
        nn.Module.__init__(self)
        self.fc1, self.fc2 = PackedLinear(ff.fc1, activation="relu"), PackedLinear(ff.fc2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.fc2(self.fc1(x))  # hidden (B, T, F), already through ReLU


class PackedTokenEmbedding(nn.Module):
    """A :class:`~mt.model.embeddings.TokenEmbedding` whose tied output layer multiplies by the
    table packed once (the (V, D) table is an ``nn.Linear`` weight D -> V); the lookup reads the
    table as it is."""

    def __init__(self, embedding: TokenEmbedding) -> None:
        super().__init__()
        self.weight = embedding.weight.detach()  # (V, D), for the lookup
        self.scale = embedding.scale
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D)."""
        return nn.functional.embedding(tokens, self.weight) * self.scale

    def logits(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, V)."""
        return packed_product(x, self.packed, None)


_PACKED = {
    MultiHeadAttention: PackedMultiHeadAttention,
    FeedForward: PackedFeedForward,
    nn.Linear: PackedLinear,
    TokenEmbedding: PackedTokenEmbedding,
}


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace the attention, feed-forward blocks, other ``nn.Linear`` and the token embedding
    of ``model`` (inference-only, its weights in a dtype that :func:`can_pack`) by their packed
    counterparts above, in place; returns ``model``."""
    pending = [model]
    while pending:
        module = pending.pop()
        for name, child in module.named_children():
            if (packed := _PACKED.get(type(child))) is not None:
                setattr(module, name, packed(child))
            else:
                pending.append(child)
    return model
