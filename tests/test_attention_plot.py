"""Attention made visible: the plotted weights are the model's real cross-attention."""

import pytest
import torch

from mt.model.attention import scaled_dot_product_attention
from mt.model.masks import padding_mask
from mt.plots.attention import cross_attention, save_plot
from tests.conftest import random_translator


@pytest.fixture
def translator(tokenizer):
    return random_translator(tokenizer, n_decoder_layers=2, beam_size=2, max_len_b=6)


def test_cross_attention_is_the_models_own(translator, tokenizer):
    source = "abc def ghi"
    att = cross_attention(translator, source, layer=-1)
    h, t, s = att.weights.shape
    assert h == 2 and s == len(att.source_pieces) and t == len(att.target_pieces)
    assert att.source_pieces[-1] == "</s>" and att.target_pieces[-1] == "</s>"
    torch.testing.assert_close(torch.from_numpy(att.weights.sum(-1)), torch.ones(h, t))

    # Recompute the last decoder layer's cross-attention by hand from a forward pass.
    model = translator.model
    src = torch.tensor([tokenizer.encode([source])[0] + [tokenizer.eos_id]])
    out_ids = [tokenizer.bos_id] + tokenizer.encode([translator.translate([source])[0]])[0]
    tgt_in = torch.tensor([out_ids])
    src_mask = padding_mask(src == 0)
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        x = model.pos(model.embed(tgt_in))
        layers = model.decoder_layers
        x = layers[0](x, layers[0].cross_attn.project_kv(memory), src_mask)
        last = layers[1]
        h1 = last.self_block(x, lambda z: last.self_attn(z, is_causal=True)[0])
        q = last.cross_attn.split_heads(last.cross_attn.q_proj(last.cross_block.norm(h1)))
        k, v = last.cross_attn.project_kv(memory)
        _, expected = scaled_dot_product_attention(q, k, v, mask=src_mask)
    torch.testing.assert_close(torch.from_numpy(att.weights), expected[0], atol=1e-5, rtol=1e-5)


def test_heatmap_png_is_written(translator, tmp_path):
    path = save_plot(cross_attention(translator, "abc def", layer=0), tmp_path / "a" / "att.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_layer_is_a_clear_error(translator):
    with pytest.raises(ValueError, match="attention_layer=5 does not exist: the decoder has 2"):
        cross_attention(translator, "abc", layer=5)


def test_training_curves_png_from_tensorboard(tmp_path):
    from mt.loggers import TensorBoardLogger
    from mt.plots.curves import plot_curves, read_scalars

    logger = TensorBoardLogger(tmp_path / "tb")
    for step in (10, 20, 30):
        logger.log_dict({"train/loss": 5.0 - step / 10, "train/lr": 1e-3}, step)
        logger.log_dict({"val/loss": 4.0 - step / 20, "val/bleu": step / 2}, step)
    logger.close()
    assert read_scalars(tmp_path / "tb")["val/bleu"] == [(10, 5.0), (20, 10.0), (30, 15.0)]
    path = plot_curves(tmp_path / "tb", tmp_path / "curves.png")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="cannot write the plot .*a_file/x.png: a file is in the way"):
        plot_curves(tmp_path / "tb", tmp_path / "a_file" / "x.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError):
        plot_curves(tmp_path / "missing", tmp_path / "x.png")


def test_a_file_given_as_the_heatmap_folder_is_refused_before_any_work(tmp_path):
    from mt.plots.attention import plot_folder

    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match="attention_plot=.*taken is a file: give a folder"):
        plot_folder(tmp_path / "taken")
    assert plot_folder(tmp_path / "new" / "plots").is_dir()
