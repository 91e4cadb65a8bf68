"""Decoding's precisions (mt/decoding/precision.py): the bf16 copy of the model computes the
fp32 model's function, is made once and again after the weights change, and ``auto`` times a
few real decode steps once per search kind and may well choose fp32."""

import logging
from dataclasses import replace

import pytest
import torch

from mt.decoding import precision as decode_precision
from mt.decoding.precision import PrecisionModels, held_in
from mt.model.masks import padding_mask
from mt.runtime import PrecisionChoice, auto_candidates
from tests.conftest import random_translator, small_model, synthetic_sentences


def _logits(model, src, tgt_in):
    src_mask = padding_mask(src == 0)
    with torch.inference_mode():
        return model.decode(tgt_in, model.encode(src, src_mask), src_mask).float()


def test_the_bf16_copy_computes_the_fp32_models_function():
    model = small_model(vocab_size=300, n_encoder_layers=2, n_decoder_layers=2).eval()
    src = torch.randint(4, 300, (6, 11))
    tgt_in = torch.randint(4, 300, (6, 9))
    copy = held_in(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model is untouched
    exact, fast = _logits(model, src, tgt_in), _logits(copy, src, tgt_in)
    relative = (fast - exact).norm() / exact.norm()
    assert relative < 0.02  # bf16 keeps ~3 significant digits per product
    agree = (fast.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agree > 0.9


def test_the_bf16_copy_is_made_once_and_again_after_the_weights_change():
    model = small_model(vocab_size=300)
    held = PrecisionModels(model)
    first, _ = held.for_search("bf16")
    assert held.for_search("bf16")[0] is first
    assert held.for_search("fp32")[0] is model
    with torch.no_grad():
        model.embed.weight.add_(1.0)  # as an optimizer step does, in place
    second, _ = held.for_search("bf16")
    assert second is not first
    assert torch.equal(second.embed.weight, model.embed.weight.to(torch.bfloat16))


def test_bf16_search_runs_the_copy_and_the_fp32_model_stays_fp32(tokenizer):
    translator = random_translator(tokenizer, beam_size=3, max_len_b=5, precision="bf16")
    seen = []
    handle = translator.model.decoder_layers[0].ff.register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype)
    )
    try:
        translator.translate(synthetic_sentences(3, seed=7))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the copy carries the hook along
    assert all(p.dtype == torch.float32 for p in translator.model.parameters())


def _fixed_choice(chosen: str, calls: list):
    def choose(probes, device):
        for probe in probes.values():
            probe()  # the real decode steps run, in each candidate
        calls.append(sorted(probes))
        return PrecisionChoice(chosen, dict.fromkeys(probes, 1.0))

    return choose


@pytest.mark.parametrize("chosen", ["fp32", "bf16"])
def test_auto_times_once_per_search_kind_and_searches_in_its_choice(
    tokenizer, monkeypatch, caplog, chosen
):
    calls: list = []
    monkeypatch.setattr(decode_precision, "choose_by_timing", _fixed_choice(chosen, calls))
    translator = random_translator(tokenizer, beam_size=1, max_len_b=5, precision="auto")
    lines = synthetic_sentences(4, seed=3)
    expected = translator.with_settings(replace(translator.settings, precision=chosen))
    with caplog.at_level(logging.INFO, logger="mt.decoding.precision"):
        assert translator.precision() == chosen  # as a server asks before it listens
        greedy = translator.translate(lines)
        assert translator.translate(lines) == greedy
        translator.with_settings(replace(translator.settings, beam_size=3)).translate(lines)
    candidates = sorted(auto_candidates(torch.device("cpu")))
    assert calls == [candidates, candidates]  # greedy once, beam 3 once
    assert greedy == expected.translate(lines)
    assert (torch.bfloat16 in translator.precisions._copies) == (chosen == "bf16")
    assert "decode precision=auto, greedy" in caplog.text
    assert "decode precision=auto, beam 3" in caplog.text


def test_auto_chooses_among_timed_candidates_on_a_real_probe(tokenizer):
    translator = random_translator(tokenizer, beam_size=2, max_len_b=5, precision="auto")
    translator.translate(synthetic_sentences(2, seed=4))
    (choice,) = translator.precisions.choices.values()
    assert choice.precision in ("fp32", "bf16")
    assert set(choice.seconds) == set(auto_candidates(torch.device("cpu")))
    assert min(choice.seconds.values()) > 0
    assert choice.seconds[choice.precision] * 1.05 <= choice.seconds["fp32"] or (
        choice.precision == "fp32"
    )
