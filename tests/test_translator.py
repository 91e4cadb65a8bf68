"""Strings in, strings out: order, empty lines, batching, long inputs, the pipe contract."""

import io
import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt.decoding.interactive import prompt_loop, text_lines, translate_stream
from tests.conftest import random_translator, synthetic_sentences


@pytest.fixture
def translator(tokenizer):
    return random_translator(tokenizer, beam_size=3, max_len_b=5, batch_tokens=40)


def test_batched_translation_equals_one_by_one_and_keeps_order(translator):
    lines = synthetic_sentences(9, seed=5)
    batched = translator.translate(lines)
    assert batched == [translator.translate([line])[0] for line in lines]


def test_empty_lines_give_empty_outputs(translator):
    out = translator.translate(["", "abc def", "   "])
    assert out[0] == "" and out[2] == ""
    assert len(out) == 3


def test_greedy_is_beam_one(translator):
    """beam_size=1 takes the greedy search, which must find what a beam of one finds."""
    from mt.decoding.search import beam_search

    tok, ids = translator.tokenizer, translator.ids
    fits = [s for s in synthetic_sentences(30, seed=6) if len(tok.encode([s])[0]) < 30]
    lines = fits[:6]  # not cut to the model's positions
    assert len(lines) == 6
    translator.settings.beam_size = 1
    greedy = translator.translate(lines)
    for line, text in zip(lines, greedy):
        src = torch.tensor([tok.encode([line])[0] + [ids.eos]])
        (best,) = beam_search(
            translator.model, src, ids, beam_size=1, length_penalty=0.0, max_len_b=5
        )[0]
        assert tok.decode([best.tokens])[0] == text
    assert any(greedy)  # not all empty: the comparison compares something


def test_n_best(translator):
    nbest = translator.translate_nbest(["abc def ghi"], n_best=3)[0]
    assert len(nbest) == 3
    assert nbest[0].score >= nbest[1].score >= nbest[2].score
    with pytest.raises(ValueError, match="n_best=4 cannot exceed beam_size=3"):
        translator.translate_nbest(["x"], n_best=4)


def test_overlong_input_is_cut_with_a_warning(translator, caplog):
    with caplog.at_level(logging.WARNING):
        out = translator.translate(["abc " * 5000])
    assert len(out) == 1
    assert "cut to the model's maximum of 39" in caplog.text


def test_pipe_writes_one_line_per_input_line(translator):
    lines = ["abc def\n", "\n", "ghi\r\n", "🤖 猫 שלום\n", "\x00\x07 control\n", "last"]
    out = io.StringIO()
    count = translate_stream(translator, lines, out, batch_size=2)
    written = out.getvalue().split("\n")
    assert count == 6
    assert len(written) == 7 and written[-1] == ""  # six lines, each ending in a newline
    assert written[1] == ""


def test_prompt_answers_each_line_and_ends_on_eof(translator):
    out = io.StringIO()
    prompt_loop(translator, n_best=2, inp=io.StringIO("abc\n\n"), out=out)
    text = out.getvalue()
    assert text.count("> ") == 3  # two lines, then end of input
    assert "1. (" in text and "2. (" in text


def test_binary_and_invalid_utf8_input_keeps_the_line_count(translator):
    raw = b"abc\xff\xfe def\n\x00\x01\x02\n\rcarriage\x0cfeed\x85\n\xf0\x9f\xa4\x96\n"
    out = io.StringIO()
    count = translate_stream(translator, text_lines(io.BytesIO(raw)), out)
    assert count == 4
    assert out.getvalue().count("\n") == 4


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=60), max_size=6)
)
def test_any_text_gives_exactly_one_line_per_input_line(translator, lines):
    raw = "".join(line + "\n" for line in lines).encode("utf-8", errors="surrogatepass")
    out = io.StringIO()
    translate_stream(translator, text_lines(io.BytesIO(raw)), out, batch_size=4)
    written = out.getvalue().split("\n")
    assert len(written) == len(lines) + 1 and written[-1] == ""
    for line, translation in zip(lines, written):
        if not line.strip():
            assert translation == ""


def test_ctrl_c_at_the_prompt_ends_quietly(translator):
    class Interrupting(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    out = io.StringIO()
    prompt_loop(translator, inp=Interrupting(), out=out)  # no exception escapes
    assert out.getvalue().endswith("> \n")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decode_precision_is_the_models_arithmetic_during_search(translator, precision):
    seen = []
    layer = translator.model.decoder_layers[0].ff.fc1
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    translator.settings.precision = precision
    try:
        out = translator.translate(synthetic_sentences(3, seed=7))
    finally:
        handle.remove()
    assert len(out) == 3 and all(isinstance(line, str) for line in out)
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen and set(seen) == {expected}
    # Outside the search the model is back in its own arithmetic.
    assert layer(torch.zeros(1, layer.in_features)).dtype == torch.float32


def test_unknown_decode_precision_is_rejected_with_the_option_name():
    from mt.checks import validate_run_config
    from mt.config import DecodeConfig, RunConfig

    with pytest.raises(ValueError, match="decode.precision='half' must be one of auto, fp32"):
        validate_run_config(RunConfig(decode=DecodeConfig(precision="half")))
