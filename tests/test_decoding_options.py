"""Decoding like the peers: sampling, target prefixes, ensembles, and scoring given pairs."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.config import DecodeConfig
from mt.data.batching import pad
from mt.decoding.ensemble import Ensemble
from mt.decoding.loading import load_translator
from mt.decoding.sampling import Sampler
from mt.decoding.scoring import score_pairs
from mt.decoding.search import SpecialIds, beam_search, greedy_search
from mt.model.loss import label_smoothed_nll
from tests.conftest import random_translator, synthetic_sentences, untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IDS = SpecialIds(pad=0, bos=2, eos=3)
LINES = synthetic_sentences(12, seed=5)


def test_sampling_with_top_k_1_is_greedy(tokenizer):
    greedy = random_translator(tokenizer, beam_size=1)
    sampled = greedy.with_settings(DecodeConfig(beam_size=1, sampling=True, top_k=1, seed=7))
    assert sampled.translate(LINES) == greedy.translate(LINES)


def test_one_seed_draws_the_same_samples_another_seed_others(tokenizer):
    settings = DecodeConfig(beam_size=1, sampling=True, temperature=2.0, n_best=3, seed=11)
    first = random_translator(tokenizer, beam_size=1)
    a = first.with_settings(settings).translate_nbest(LINES)
    b = first.with_settings(settings).translate_nbest(LINES)
    assert [[t.text for t in n] for n in a] == [[t.text for t in n] for n in b]
    assert all(len(n) == 3 for n in a)
    other = first.with_settings(DecodeConfig(**{**settings.__dict__, "seed": 12}))
    assert [t.text for n in other.translate_nbest(LINES) for t in n] != [
        t.text for n in a for t in n
    ]


def test_the_sampler_keeps_to_top_k_top_p_and_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).repeat(2000, 1)

    def draws(**kw) -> torch.Tensor:
        kw = {"top_k": 0, "top_p": 1.0, "temperature": 1.0, **kw}
        return torch.bincount(Sampler(generator=g, **kw)(logits), minlength=4)

    assert draws(top_k=2)[2:].sum() == 0
    assert draws(top_p=0.5).tolist() == [2000, 0, 0, 0]  # 0.6 alone reaches 0.5
    assert draws(top_p=0.85)[2:].sum() == 0 and draws(top_p=0.85)[1] > 0  # 0.6 + 0.3
    full = draws()
    assert abs(full[0] / 2000 - 0.6) < 0.05
    assert draws(temperature=0.05)[0] == 2000  # sharp: the most probable only


def test_sampling_options_are_checked(tokenizer):
    for bad, message in (
        ({"beam_size": 5}, "sampling=true draws tokens instead of searching: set beam_size=1"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"temperature": -1.0}, "temperature=-1.0 must be positive"),
        ({"top_k": -2}, "top_k=-2 must be 0"),
    ):
        with pytest.raises(ValueError, match=message):
            random_translator(tokenizer, **{"beam_size": 1, "sampling": True, **bad})


@pytest.mark.parametrize("beam_size", [1, 3])
def test_outputs_begin_with_their_prefix(tokenizer, beam_size):
    translator = random_translator(tokenizer, beam_size=beam_size, max_len_a=0.0, max_len_b=2)
    prefixes = [" ".join(line.split()[:3]) for line in synthetic_sentences(12, seed=9)]
    prefixes[3] = ""  # no prefix on this line
    outputs = translator.translate_nbest(LINES, prefixes=prefixes)
    for prefix, nbest in zip(prefixes, outputs):
        for hyp in nbest:  # a prefix longer than the length limit still fits
            assert hyp.text.startswith(prefix), (prefix, hyp.text)
    plain = translator.translate([LINES[3]])[0]
    assert outputs[3][0].text == plain


def test_a_forced_prefix_is_scored_by_the_model(tokenizer):
    translator = random_translator(tokenizer, beam_size=2, length_penalty=0.0)
    model = translator.model.eval()
    src = pad([tokenizer.encode([LINES[0]])[0]], 0, suffix=3)
    prefix_ids = tokenizer.encode(["ab cd"])[0]
    hyp = beam_search(
        model, src, IDS, beam_size=2, length_penalty=0.0, prefix=torch.tensor([prefix_ids])
    )[0][0]
    assert hyp.tokens[: len(prefix_ids)] == prefix_ids
    with torch.no_grad():
        logits = model(src, torch.tensor([[2] + hyp.tokens]))
    logits[..., [0, 2]] = -math.inf
    logp = logits.log_softmax(-1)[0]
    total = sum(float(logp[i, t]) for i, t in enumerate(hyp.tokens + [3]))
    assert hyp.score == pytest.approx(total, abs=1e-4)


class Scripted(torch.nn.Module):
    """A fake decoder whose next-token distribution is fixed: ``probs`` (V,) at every step."""

    max_positions, pad_id = 50, 0

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.tensor(probs)))

    def encode(self, src, src_mask):
        return torch.zeros(src.size(0), src.size(1), 1)

    def init_state(self, memory, src_mask, group=1):
        class State:
            def index_select(self, index, memory=True):
                pass

        return State()

    def decode_step(self, tokens, state):
        return self.logits.expand(tokens.size(0), -1).clone()


def test_an_ensemble_averages_probabilities_not_logits():
    # V = 6: pad, unk, bos, eos, then "a" (4) and "b" (5).
    a = Scripted([1e-9, 1e-9, 1e-9, 0.1, 0.5, 0.4])
    b = Scripted([1e-9, 1e-9, 1e-9, 0.1, 0.0 + 1e-9, 0.9])
    both = Ensemble([a, b])
    step = both.decode_step(
        torch.tensor([2]),
        both.init_state(both.encode(torch.ones(1, 2, dtype=torch.long), None), None),
    )
    expected = torch.log((a.logits.detach().exp() + b.logits.detach().exp()) / 2)
    torch.testing.assert_close(step[0], expected)
    src = torch.tensor([[4, 3]])
    first = greedy_search(a, src, IDS, max_len_a=0.0, max_len_b=2)[0]
    together = greedy_search(both, src, IDS, max_len_a=0.0, max_len_b=2)[0]
    assert first[0] == 4 and together[0] == 5  # a alone says "a"; the mean says "b" (0.65)
    beams = beam_search(both, src, IDS, beam_size=2, max_len_a=0.0, max_len_b=2)[0]
    assert beams[0].tokens[0] == 5


def test_ensembles_load_from_a_list_of_checkpoints(tmp_path, tokenizer):
    a = untrained_checkpoint(tmp_path, tokenizer, "a.pt", 1)
    b = untrained_checkpoint(tmp_path, tokenizer, "b.pt", 2)
    settings = DecodeConfig(beam_size=2)
    alone, _ = load_translator(str(a), settings, "cpu")
    twice, _ = load_translator([str(a), str(a)], settings, "cpu")  # a model with itself
    assert twice.translate(LINES) == alone.translate(LINES)
    pair, _ = load_translator([str(a), str(b)], settings, "cpu")
    assert isinstance(pair.model, Ensemble) and len(pair.translate(LINES)) == len(LINES)
    from mt.data.tokenizer import Tokenizer

    other = Tokenizer.train(synthetic_sentences(300, seed=3), vocab_size=300)
    c = untrained_checkpoint(tmp_path, other, "c.pt", 3)
    with pytest.raises(ValueError, match="a.pt and .*c.pt have different SentencePiece models"):
        load_translator([str(a), str(c)], settings, "cpu")
    with pytest.raises(ValueError, match=r"checkpoint=\[\] is empty"):
        load_translator([], settings, "cpu")


def test_scores_are_the_training_losss_log_probabilities(tmp_path, tokenizer):
    translator = random_translator(tokenizer)
    model = translator.model.eval()
    sources = [line[:30] for line in LINES]  # within the model's 40 positions
    targets = [line[:30] for line in synthetic_sentences(12, seed=6)]
    scores, cut = score_pairs(model, tokenizer, sources, targets, batch_tokens=60)
    assert cut == 0 and len(scores) == 12
    src = pad(tokenizer.encode(sources), 0, suffix=3)
    tgt = tokenizer.encode(targets)
    with torch.no_grad():
        logits = model(src, pad(tgt, 0, prefix=2))
    _, nll, n = label_smoothed_nll(logits, pad(tgt, 0, suffix=3), epsilon=0.0, pad_id=0)
    assert sum(s.tokens for s in scores) == int(n)
    assert sum(s.log_prob for s in scores) == pytest.approx(-float(nll), rel=1e-5)
    one, _ = score_pairs(model, tokenizer, sources[:1], targets[:1])
    assert one[0].log_prob == pytest.approx(scores[0].log_prob, abs=1e-4)  # batching aside


def test_score_script_prints_one_line_per_pair_and_checks_its_files(tmp_path, tokenizer):
    path = untrained_checkpoint(tmp_path, tokenizer, "m.pt", 1)
    (tmp_path / "s").write_text("a b\n\nc d e\n")
    (tmp_path / "t").write_text("x y\nz\n\n")
    (tmp_path / "short").write_text("x\n")
    run = [sys.executable, "scripts/score.py", f"checkpoint={path}", f"src={tmp_path / 's'}"]
    done = subprocess.run(
        [*run, f"tgt={tmp_path / 't'}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    assert all(float(r[0]) < 0 and int(r[1]) >= 1 for r in rows)
    assert float(rows[0][2]) == pytest.approx(float(rows[0][0]) / int(rows[0][1]), abs=1e-3)
    bad = subprocess.run(
        [*run, f"tgt={tmp_path / 'short'}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("parallel files must have one line per sentence pair")
