"""Properties of the Transformer: causality, padding invariance, cached = uncached decoding."""

import pytest
import torch

from mt.model.masks import padding_mask
from tests.conftest import small_model


def random_batch(b=3, s=7, t=6, vocab=23):
    src = torch.randint(4, vocab, (b, s))
    tgt = torch.randint(4, vocab, (b, t))
    return src, tgt


@pytest.mark.parametrize("pre_norm", [True, False])
def test_decoder_is_causal(pre_norm):
    model = small_model(pre_norm=pre_norm)
    src, tgt = random_batch()
    logits = model(src, tgt)
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 20 + 4  # change the future only
    logits2 = model(src, changed)
    torch.testing.assert_close(logits[:, :4], logits2[:, :4])
    assert not torch.allclose(logits[:, 4:], logits2[:, 4:])


@pytest.mark.parametrize("pre_norm", [True, False])
def test_padding_does_not_change_outputs(pre_norm):
    model = small_model(pre_norm=pre_norm)
    src, tgt = random_batch(b=1)
    padded_src = torch.cat([src, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded_tgt = torch.cat([tgt, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    logits = model(src, tgt)
    logits_padded = model(padded_src, padded_tgt)
    torch.testing.assert_close(logits, logits_padded[:, : tgt.size(1)], atol=1e-5, rtol=1e-5)


def test_batch_rows_are_independent():
    model = small_model()
    src, tgt = random_batch(b=2)
    src[1, 5:] = 0  # row 1 padded, row 0 not
    both = model(src, tgt)
    alone = model(src[:1], tgt[:1])
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_cached_step_decoding_equals_full_decoding(pre_norm):
    model = small_model(pre_norm=pre_norm)
    src, tgt = random_batch()
    src[0, 4:] = 0
    full = model(src, tgt)  # (B, T, V)
    src_mask = padding_mask(src == 0)
    state = model.init_state(model.encode(src, src_mask), src_mask)
    steps = [model.decode_step(tgt[:, t], state) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_beams_sharing_their_sentences_memory_equal_a_copy_per_beam(pre_norm):
    """A state with ``group`` rows per sentence (beam search's beams, attending to one memory
    as a block of query positions) gives the logits of one whose memory is copied per row,
    through reorderings within the sentences and the dropping of a sentence."""
    model = small_model(pre_norm=pre_norm)
    src, _ = random_batch()  # (3, S)
    src[0, 4:] = 0
    k = 4
    src_mask = padding_mask(src == 0)
    memory = model.encode(src, src_mask)  # (3, S, D)
    shared = model.init_state(memory, src_mask, k)
    copied = model.init_state(
        memory.repeat_interleave(k, dim=0), src_mask.repeat_interleave(k, dim=0)
    )
    tokens = torch.randint(4, 23, (3 * k,))
    for step in range(4):
        torch.testing.assert_close(
            model.decode_step(tokens, shared),
            model.decode_step(tokens, copied),
            atol=1e-5,
            rtol=1e-5,
        )
        rows = tokens.numel() // k
        within = (torch.arange(rows)[:, None] * k + torch.randint(0, k, (rows, k))).view(-1)
        for state in (shared, copied):
            state.index_select(within, memory=False)  # beams reordered within their sentence
        tokens = torch.randint(4, 23, (tokens.numel(),))
        if step == 1:  # the middle sentence is done: its rows (and memory) leave
            keep = torch.cat([torch.arange(k), torch.arange(2 * k, 3 * k)])
            for state in (shared, copied):
                state.index_select(keep)
            tokens = tokens[keep]
    assert shared.memory_kv[0][0].size(0) == 2 and copied.memory_kv[0][0].size(0) == 2 * k


def test_embeddings_are_shared_and_scaled():
    model = small_model()
    assert model.embed.scale == pytest.approx(16**0.5)
    logits = model(*random_batch())
    assert logits.shape == (3, 6, 23)
    n_tables = sum(1 for p in model.parameters() if p.shape == (23, 16))
    assert n_tables == 1  # source, target and output layer use one table
    # The output: the embedding of token i is table[i] * sqrt(d_model) (section 3.4).
    tokens = torch.tensor([[3, 7, 22]])
    table = next(p for p in model.parameters() if p.shape == (23, 16))
    torch.testing.assert_close(model.embed(tokens), table[tokens] * 16**0.5)


def test_too_long_input_is_a_clear_error():
    model = small_model(max_positions=8)
    src, tgt = random_batch(s=9)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(src, tgt)


def test_right_padded_targets_decode_each_sentence_as_alone():
    """The decoder's self-attention has only the causal mask (Transformer.decode): with right
    padding, which collate makes, the real positions give what they give unpadded; left
    padding would not, which is why it is never made."""
    model = small_model().eval()
    src = torch.randint(3, 23, (1, 5))
    tgt = torch.randint(3, 23, (1, 4))
    pad = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        alone = model(src, tgt)
        right = model(src, torch.cat([tgt, pad], 1))
        left = model(src, torch.cat([pad, tgt], 1))
    torch.testing.assert_close(right[:, :4], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(left[:, 3:], alone, atol=1e-3)
