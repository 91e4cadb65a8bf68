"""Each fast path of ``mt/kernels`` computes what the plain code of ``mt/model`` computes, in the
forward pass and in the gradients; ``model.kernels`` is the one switch between them."""

import pytest
import torch
from torch import nn

import mt.kernels.loss
from mt.kernels import loss_functions, use_kernels
from mt.kernels.attention import explicit_attention, fast_attention
from mt.kernels.dropout import Dropout
from mt.kernels.packed import can_pack
from mt.model import loss as plain_loss
from mt.model.attention import MultiHeadAttention, scaled_dot_product_attention
from mt.model.masks import padding_mask
from mt.training.trainer import Trainer
from tests.conftest import small_model, small_run

# float32 kernels agree with the plain code to rounding; bf16 ones to bf16's 8 bits.
FP32 = dict(atol=1e-5, rtol=1e-4)
BF16 = dict(atol=0.05, rtol=0.05)


def qkv(requires_grad=True):
    torch.manual_seed(0)
    shapes = [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)]
    return [torch.randn(s, requires_grad=requires_grad) for s in shapes]


def grads(out, inputs):
    return torch.autograd.grad(out.float().pow(2).sum(), inputs)


MASK = padding_mask(torch.tensor([[False] * 7, [False] * 4 + [True] * 3]))  # (2, 1, 1, 7)


@pytest.mark.parametrize("kernel", [fast_attention, explicit_attention])
@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_attention_kernels_equal_the_formula_forward_and_backward(kernel, masking):
    q, k, v = qkv()
    if masking != "padding":  # causal: self-attention, Tq = Tk
        k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(2))
    mask = {"padding": MASK, "causal": None, "both": MASK[..., :5]}[masking]
    is_causal = masking != "padding"
    plain, _ = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    fast, weights = kernel(q, k, v, mask=mask, is_causal=is_causal)
    assert weights is None
    torch.testing.assert_close(fast, plain, **FP32)
    for g_fast, g_plain in zip(grads(fast, [q, k, v]), grads(plain, [q, k, v])):
        torch.testing.assert_close(g_fast, g_plain, **FP32)


def test_cpu_bf16_attention_multiplies_in_bf16_without_the_fused_kernel(monkeypatch):
    """Under CPU bf16 autocast the kernel multiplies in bf16, normalises in fp32 and returns
    bf16: close to the plain float32 result, gradients flowing, PyTorch's fused kernel unused."""
    q, k, v = qkv()
    plain, _ = scaled_dot_product_attention(q, k, v, mask=MASK)

    def fused_kernel(*args, **kwargs):
        raise AssertionError("the fused kernel ran under CPU bf16")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", fused_kernel)
    low = [t.bfloat16() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fast_attention(*low, mask=MASK)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain, **BF16)
    for g_fast, g_plain in zip(grads(out, [q, k, v]), grads(plain, [q, k, v])):
        torch.testing.assert_close(g_fast, g_plain, **BF16)


def test_cpu_bf16_decode_step_attention_takes_the_fused_kernel_and_equals_the_formula(
    monkeypatch,
):
    """A search's step in bf16 on a CPU (a single query position, or a sentence's beams as a
    few positions; no gradients) goes to PyTorch's fused kernel, in bf16, and gives the
    formula's result, with a padding mask and without."""
    q, k, v = qkv(requires_grad=False)
    fused = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].dtype)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    for positions in (1, 3):
        for mask in (MASK, None):
            block = q[:, :, :positions]  # (B, H, positions, Dh)
            plain, _ = scaled_dot_product_attention(block, k, v, mask=mask)
            with torch.inference_mode():
                out, _ = fast_attention(*(t.bfloat16() for t in (block, k, v)), mask=mask)
            assert out.dtype == torch.bfloat16 and out.shape == plain.shape
            torch.testing.assert_close(out.float(), plain, **BF16)
    assert calls == [torch.bfloat16] * 4


def test_attention_dropout_kernel_drops_whole_weights_like_the_plain_one():
    """With dropout on the weights the kernel keeps the output's expectation: averaged over
    many masks it is the plain output without dropout."""
    q, k, v = qkv(requires_grad=False)
    plain, _ = scaled_dot_product_attention(q, k, v, mask=MASK)
    outs = torch.stack(
        [explicit_attention(q, k, v, mask=MASK, dropout_p=0.3)[0] for _ in range(600)]
    )
    torch.testing.assert_close(outs.mean(0), plain, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_kernel_equals_the_plain_loss_forward_and_backward(epsilon, dtype, monkeypatch):
    monkeypatch.setattr(mt.kernels.loss, "CPU_BLOCK_VALUES", 3 * 13)  # several blocks of rows
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 13).to(dtype).requires_grad_()
    target = torch.randint(1, 13, (2, 5))
    target[1, 3:] = 0  # padding
    results = []
    for impl in (plain_loss, mt.kernels.loss):
        loss, nll, n = impl.label_smoothed_nll(logits, target, epsilon=epsilon, pad_id=0)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, nll, n, grad))
    (loss_p, nll_p, n_p, grad_p), (loss_k, nll_k, n_k, grad_k) = results
    assert n_p == n_k == 8
    torch.testing.assert_close(loss_k, loss_p, **FP32)
    torch.testing.assert_close(nll_k, nll_p, **FP32)
    assert grad_k.dtype == grad_p.dtype == dtype
    torch.testing.assert_close(grad_k, grad_p, **(FP32 if dtype == torch.float32 else BF16))


def test_symmetric_kl_kernel_equals_the_plain_one_forward_and_backward(monkeypatch):
    monkeypatch.setattr(mt.kernels.loss, "CPU_BLOCK_VALUES", 4 * 13)
    torch.manual_seed(1)
    p, q = (torch.randn(2, 5, 13, requires_grad=True) for _ in range(2))
    target = torch.randint(1, 13, (2, 5))
    target[0, 4:] = 0
    plain = plain_loss.symmetric_kl(p, q, target, pad_id=0)
    fast = mt.kernels.loss.symmetric_kl(p, q, target, pad_id=0)
    torch.testing.assert_close(fast, plain, **FP32)
    for g_fast, g_plain in zip(
        torch.autograd.grad(fast, [p, q]), torch.autograd.grad(plain, [p, q])
    ):
        torch.testing.assert_close(g_fast, g_plain, **FP32)


def test_the_switch_swaps_the_modules_and_back_without_touching_the_weights():
    model = small_model(dropout=0.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert all(m.attention is scaled_dot_product_attention for m in attentions)
    assert not any(isinstance(m, Dropout) for m in model.modules())  # plain as built
    use_kernels(model, "auto")
    assert all(m.attention is fast_attention for m in attentions)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, Dropout))
    use_kernels(model, "plain")
    assert all(m.attention is scaled_dot_product_attention for m in attentions)
    assert not any(isinstance(m, Dropout) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="model.kernels='fast' must be one of auto, plain"):
        use_kernels(model, "fast")
    assert loss_functions("plain").label_smoothed_nll is plain_loss.label_smoothed_nll


def test_whole_model_with_kernels_equals_the_plain_model():
    plain = small_model()
    fast = use_kernels(small_model(), "auto")
    fast.load_state_dict(plain.state_dict())
    src = torch.randint(4, 23, (3, 6))
    src[1, 4:] = 0
    tgt = torch.randint(4, 23, (3, 5))
    out_plain, out_fast = plain(src, tgt), fast(src, tgt)
    torch.testing.assert_close(out_fast, out_plain, **FP32)
    out_plain.pow(2).sum().backward()
    out_fast.pow(2).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **FP32, msg=name)


def test_plain_dropout_drops_exactly_the_configured_rate():
    model = use_kernels(small_model(dropout=0.1), "plain").train()
    drop = next(m for m in model.modules() if type(m) is nn.Dropout)
    torch.manual_seed(0)
    dropped = (drop(torch.ones(1_000_000)) == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # the kernel would drop 26/256 = 0.1016
    kernel = Dropout(0.1).train()
    assert abs((kernel(torch.ones(1_000_000)) == 0).float().mean().item() - 26 / 256) < 0.002


def test_a_training_run_works_under_plain_kernels(tmp_path):
    cfg = small_run(tmp_path, model={"kernels": "plain", "dropout": 0.1}, max_steps=8)
    trainer = Trainer(cfg, tmp_path / "run")
    assert not any(isinstance(m, Dropout) for m in trainer.model.modules())
    metrics = trainer.fit()
    assert metrics["train"]["steps"] == 8
    losses = [h["val/loss"] for h in metrics["validation_history"]]
    assert losses[-1] < losses[0]  # it learns


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.999])
def test_dropout_mask_bit_patterns_equal_the_plain_definition(dtype, p):
    """The mask is built from integer bit patterns; it must equal ``(byte >= threshold) * scale``
    from the same random draws, in every float type (0.999 keeps 1 byte value in 256)."""
    from mt.kernels.dropout import keep_mask

    shape = torch.Size([37, 29])  # 1,073 elements: not a multiple of the 8 bytes per draw
    torch.manual_seed(5)
    mask = keep_mask(shape, p, dtype)
    torch.manual_seed(5)
    words = torch.empty((shape.numel() + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
    byte = words.view(torch.uint8)[: shape.numel()].view(shape)
    threshold = min(round(p * 256), 255)
    expected = (byte >= threshold).to(dtype) * torch.tensor(256 / (256 - threshold), dtype=dtype)
    assert mask.dtype == dtype
    assert torch.equal(mask, expected)
    assert 0 < int((mask == 0).sum()) < shape.numel()


def test_dropout_rate_scale_and_reproducibility():
    from mt.kernels.dropout import Dropout

    drop = Dropout(0.1).train()
    x = torch.ones(400_000)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b)  # the default generator drives the mask (seeds, checkpoints)
    dropped = (a == 0).float().mean().item()
    assert abs(dropped - 26 / 256) < 0.003  # 0.1 rounded to a multiple of 1/256
    assert abs(a.mean().item() - 1.0) < 0.01  # kept values scaled: expectation preserved
    assert torch.equal(drop.eval()(x), x)
    y = torch.randn(64, 32, requires_grad=True)
    out = Dropout(0.5).train()(y)
    out.sum().backward()
    torch.testing.assert_close(y.grad, (out != 0).float() * 2.0)  # gradient through kept only


needs_packing = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.bfloat16),
    reason="this PyTorch does not pack bf16 weights for oneDNN",
)


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (4, 1, 48), (2, 64, 48), (3, 100, 48)])
def test_packed_linear_equals_the_bf16_linear(bias, shape):
    from mt.kernels.packed import PackedLinear

    linear = nn.Linear(48, 40, bias=bias).to(torch.bfloat16)
    x = torch.randn(shape).to(torch.bfloat16)
    with torch.inference_mode():
        expected, packed = linear(x), PackedLinear(linear)(x)
    assert packed.shape == expected.shape and packed.dtype == torch.bfloat16
    # The same products; only the order of float32 accumulation may differ, then bf16 rounding.
    torch.testing.assert_close(packed.float(), expected.float(), atol=0.05, rtol=0.02)


def test_packed_products_pad_their_rows_to_few_sizes():
    """Rows are padded to a multiple of 16, at most 1/8 more from 128 rows on, so that a search
    whose rows shrink step by step meets a few dozen sizes (oneDNN's cached kernels), not one
    per count."""
    from mt.kernels.packed import bucket_rows

    sizes = {rows: bucket_rows(rows) for rows in range(1, 8193)}
    assert all(size >= rows and size % 16 == 0 for rows, size in sizes.items())
    assert all(size <= rows * 9 / 8 for rows, size in sizes.items() if rows >= 128)
    assert all(bucket_rows(size) == size for size in sizes.values())  # a size is its own bucket
    assert len(set(sizes.values())) <= 64
    assert bucket_rows(0) == 0


@needs_packing
def test_packed_token_embedding_equals_the_bf16_lookup_and_output_layer():
    from mt.kernels.packed import PackedTokenEmbedding
    from mt.model.embeddings import TokenEmbedding

    embedding = TokenEmbedding(vocab_size=40, d_model=48, pad_id=0).to(torch.bfloat16)
    packed = PackedTokenEmbedding(embedding)
    tokens, x = torch.randint(0, 40, (3, 5)), torch.randn(3, 5, 48).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(tokens), embedding(tokens))
        expected, fast = embedding.logits(x), packed.logits(x)
    assert fast.shape == expected.shape == (3, 5, 40) and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), expected.float(), atol=0.05, rtol=0.02)


@needs_packing
def test_packed_attention_equals_the_bf16_attention_in_each_of_its_uses():
    """One product for self-attention's q, k, v (and the memory's k, v) computes the three
    projections: self-attention over a prefix, step by step through the cache, and attention to
    a projected memory, as the bf16 module computes them."""
    from mt.kernels.packed import PackedMultiHeadAttention
    from mt.model.attention import KVCache

    torch.manual_seed(0)
    plain = use_kernels(MultiHeadAttention(d_model=48, n_heads=4), "auto").to(torch.bfloat16)
    packed = PackedMultiHeadAttention(plain.eval())
    assert packed.attention is fast_attention
    x, memory = torch.randn(2, 5, 48).bfloat16(), torch.randn(2, 7, 48).bfloat16()  # MASK: 2
    with torch.inference_mode():
        outputs = [(plain(x, is_causal=True)[0], packed(x, is_causal=True)[0])]
        kv, fused_kv = plain.project_kv(memory), packed.project_kv(memory)
        outputs += list(zip(kv, fused_kv, strict=True))
        outputs.append((plain(x, kv=kv, mask=MASK)[0], packed(x, kv=fused_kv, mask=MASK)[0]))
        caches = KVCache(), KVCache()
        for t in range(3):
            step = x[:, t : t + 1]
            outputs.append((plain(step, cache=caches[0])[0], packed(step, cache=caches[1])[0]))
    for expected, fast in outputs:
        assert fast.shape == expected.shape and fast.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), expected.float(), **BF16)


@needs_packing
def test_packed_feed_forward_applies_relu_in_its_first_product():
    from mt.kernels.packed import PackedFeedForward
    from mt.model.layers import FeedForward

    torch.manual_seed(0)
    plain = FeedForward(d_model=48, d_ff=96, dropout=0.0).to(torch.bfloat16).eval()
    packed = PackedFeedForward(plain)
    x = torch.randn(3, 5, 48).bfloat16()
    with torch.inference_mode():
        hidden, expected, fast = packed.fc1(x), plain(x), packed(x)
    assert hidden.min() == 0 and (hidden == 0).float().mean() > 0.2  # through ReLU
    torch.testing.assert_close(fast.float(), expected.float(), **BF16)


@needs_packing
def test_the_bf16_search_copy_packs_its_linears_only_with_the_kernels_on():
    from mt.decoding.precision import PrecisionModels
    from mt.kernels import kernels_of
    from mt.kernels.packed import PackedLinear, PackedTokenEmbedding

    for kernels in ("auto", "plain"):
        model = use_kernels(small_model(), kernels)
        assert kernels_of(model) == kernels
        copy, _ = PrecisionModels(model).for_search("bf16")
        packed = [m for m in copy.modules() if isinstance(m, PackedLinear | PackedTokenEmbedding)]
        plain = [m for m in copy.modules() if type(m) is nn.Linear]
        assert (len(packed) > 0, len(plain) > 0) == (kernels == "auto", kernels == "plain")
        assert isinstance(copy.embed, PackedTokenEmbedding) == (kernels == "auto")
        assert not any(isinstance(m, PackedLinear) for m in model.modules())  # only the copy
        src = torch.randint(4, 23, (3, 6))
        tgt = torch.randint(4, 23, (3, 5))
        with torch.inference_mode():
            exact, fast = model.eval()(src, tgt), copy(src, tgt).float()
        assert (fast - exact).norm() / exact.norm() < 0.02
