"""The plain attention against the formula written out by hand; masks; weight capture.
(The fast kernels against the plain one: tests/test_kernels.py.)"""

import math

import pytest
import torch

from mt.kernels import use_kernels
from mt.kernels.attention import fast_attention
from mt.model.attention import MultiHeadAttention, capture_attention, scaled_dot_product_attention
from mt.model.masks import causal_mask, padding_mask
from tests.conftest import small_model


def by_hand(q, k, v, mask=None):
    """softmax(QK^T / sqrt(d_k)) V, one (batch, head) at a time, with Python loops."""
    b, h, tq, dk = q.shape
    out = torch.zeros_like(q)
    weights = torch.zeros(b, h, tq, k.size(2))
    for i in range(b):
        for j in range(h):
            scores = q[i, j] @ k[i, j].T / math.sqrt(dk)
            if mask is not None:
                m = mask.expand(b, h, tq, k.size(2))[i, j]
                scores = torch.where(m, scores, torch.tensor(-math.inf))
            w = torch.softmax(scores, dim=-1)
            weights[i, j] = w
            out[i, j] = w @ v[i, j]
    return out, weights


def test_scaled_dot_product_matches_formula():
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    mask = padding_mask(torch.tensor([[False] * 5, [False, False, False, True, True]]))
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    ref_out, ref_weights = by_hand(q, k, v, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
    assert torch.all(weights[1, :, :, 3:] == 0)  # padded keys get exactly zero weight
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4))


def test_multi_head_attention_matches_formula():
    mha = MultiHeadAttention(d_model=16, n_heads=4).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = padding_mask(torch.tensor([[False] * 7, [False] * 4 + [True] * 3]))
    out, none = mha(x, kv=mha.project_kv(mem), mask=mask)
    assert none is None  # weights only when asked for
    mha.need_weights = True
    again, weights = mha(x, kv=mha.project_kv(mem), mask=mask)
    q = mha.split_heads(mha.q_proj(x))
    k, v = mha.project_kv(mem)
    ref, ref_weights = by_hand(q, k, v, mask)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, out)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)


def test_causal_self_attention_attends_only_to_the_past():
    mha = MultiHeadAttention(d_model=16, n_heads=2).eval()
    x = torch.randn(3, 6, 16)
    mha.need_weights = True
    out, weights = mha(x, is_causal=True)
    upper = ~causal_mask(6)[0, 0]
    assert torch.all(weights[..., upper] == 0)
    changed = x.clone()
    changed[:, 4:] = torch.randn(3, 2, 16)  # later positions cannot change earlier outputs
    torch.testing.assert_close(mha(changed, is_causal=True)[0][:, :4], out[:, :4])


def test_mask_polarity_true_means_attend():
    mask = padding_mask(torch.tensor([[False, True]]))
    assert mask.shape == (1, 1, 1, 2)
    assert mask.tolist() == [[[[True, False]]]]
    assert causal_mask(3)[0, 0].tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]


def test_indivisible_heads_is_a_clear_error():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
        MultiHeadAttention(d_model=10, n_heads=4)


def test_capture_attention_returns_real_weights_and_restores_the_kernels():
    model = use_kernels(small_model(), "auto")  # fused attention: no weights of its own
    src = torch.randint(4, 23, (2, 5))
    src[1, 3:] = 0
    tgt = torch.randint(4, 23, (2, 4))
    plain = model(src, tgt)
    with capture_attention(model) as weights:
        captured = model(src, tgt)
    torch.testing.assert_close(plain, captured, atol=1e-5, rtol=1e-5)
    cross = weights["decoder_layers.1.cross_attn"][0]  # (B, H, T, S)
    assert cross.shape == (2, 2, 4, 5)
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 2, 4))
    assert torch.all(cross[1, :, :, 3:] == 0)
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert all(not m.need_weights and m.attention is fast_attention for m in attentions)
