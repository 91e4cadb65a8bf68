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
"""

import functools

import torch
from torch import Tensor, nn

from mt.model.embeddings import TokenEmbedding


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


def packed_product(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., in) times a packed weight (out, in), plus ``bias`` -> (..., out), the rows padded
    to :func:`bucket_rows` for the product (padding rows are zeros, their results dropped)."""
    rows = x.numel() // x.size(-1)
    flat = x.reshape(rows, x.size(-1))  # (rows, in)
    if rows and (padded := bucket_rows(rows)) != rows:
        flat = nn.functional.pad(flat, (0, 0, 0, padded - rows))  # (padded, in)
    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")  # (padded, out)
    return y[:rows].view(*x.shape[:-1], y.size(-1))


class PackedLinear(nn.Module):
    """``linear``'s function, its weight (out, in) packed for oneDNN; x (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        return packed_product(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


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


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (inference-only, its weights in a dtype that
    :func:`can_pack`) by a :class:`PackedLinear`, and its token embedding by a
    :class:`PackedTokenEmbedding`, in place; returns ``model``."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
            elif type(child) is TokenEmbedding:
                setattr(module, name, PackedTokenEmbedding(child))
    return model
