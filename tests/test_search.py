"""Greedy and beam search, with scripted fake models and with a real (random) Transformer."""

import math

import pytest
import torch

from mt.decoding.search import SpecialIds, beam_search, greedy_search
from tests.conftest import small_model

IDS = SpecialIds(pad=0, bos=1, eos=2)


class ScriptedState:
    def __init__(self, rows):
        self.rows = rows  # (B,) which sentence each row belongs to
        self.step = 0

    def index_select(self, index, memory=True):
        self.rows = self.rows[index]


class ScriptedModel:
    """Emits fixed per-step log-probabilities: table[step] (V,), the same for every row unless
    ``by_prefix`` gives a distribution for a particular previous token."""

    max_positions = 100

    def __init__(self, table, by_prefix=None):
        self.table = table
        self.by_prefix = by_prefix or {}

    def encode(self, src, src_mask):
        return torch.zeros(src.size(0), src.size(1), 4)

    def init_state(self, memory, src_mask, group=1):
        return ScriptedState(torch.arange(memory.size(0) * group))

    def decode_step(self, tokens, state):
        step = min(state.step, len(self.table) - 1)
        out = self.table[step].log().expand(tokens.size(0), -1).clone()
        for prev, probs in self.by_prefix.items():
            out[tokens == prev] = probs.log()
        state.step += 1
        return out


def dist(*probs):
    return torch.tensor(probs)


def test_greedy_follows_argmax_and_stops_at_eos():
    # V = 5: pad bos eos a(3) b(4)
    table = [dist(0, 0, 0.1, 0.6, 0.3), dist(0, 0, 0.2, 0.1, 0.7), dist(0, 0, 0.9, 0.05, 0.05)]
    out = greedy_search(ScriptedModel(table), torch.tensor([[3, 3, 2]]), IDS)
    assert out == [[3, 4]]


def test_greedy_takes_the_first_of_tied_maxima_in_bf16_as_in_float32():
    """A bf16 model's logits tie often (8 significant bits); greedy takes the first maximum,
    the token float32 would take from the same values."""
    table = [
        dist(0, 0, 0.1, 0.3, 0.3, 0.3),
        dist(0, 0, 0.2, 0.1, 0.35, 0.35),  # ties: the first of them
        dist(0, 0, 1, 0, 0, 0),
    ]
    bf16 = ScriptedModel([row.bfloat16().float() for row in table])
    bf16.decode_step = lambda t, s, step=bf16.decode_step: step(t, s).bfloat16()
    assert greedy_search(bf16, torch.tensor([[3, 3, 2]]), IDS) == [[3, 4]]
    assert greedy_search(ScriptedModel(table), torch.tensor([[3, 3, 2]]), IDS) == [[3, 4]]


def test_beam_finds_better_sequence_than_greedy():
    # Greedy takes "a" (0.6) then is stuck with 0.4 EOS; "b" (0.4) leads to a sure EOS.
    table = [dist(0, 0, 0.0, 0.6, 0.4), dist(0, 0, 0.4, 0.3, 0.3)]
    by_prefix = {4: dist(0, 0, 1.0, 0.0, 0.0)}
    model = ScriptedModel(table, by_prefix)
    src = torch.tensor([[3, 3, 2]])
    assert greedy_search(model, src, IDS) == [[3]]
    hyps = beam_search(model, src, IDS, beam_size=2, length_penalty=0.0, n_best=2)[0]
    assert hyps[0].tokens == [4]
    assert math.isclose(hyps[0].score, math.log(0.4), rel_tol=1e-5)
    assert hyps[1].tokens == [3]
    assert math.isclose(hyps[1].score, math.log(0.6 * 0.4), rel_tol=1e-5)


def test_length_penalty_normalises_by_length():
    table = [dist(0, 0, 0.0, 0.6, 0.4), dist(0, 0, 0.4, 0.3, 0.3)]
    model = ScriptedModel(table, {4: dist(0, 0, 1.0, 0.0, 0.0)})
    hyps = beam_search(
        model, torch.tensor([[3, 2]]), IDS, beam_size=2, length_penalty=1.0, n_best=2
    )[0]
    for h in hyps:
        raw = {(4,): math.log(0.4), (3,): math.log(0.24)}[tuple(h.tokens)]
        assert math.isclose(h.score, raw / (len(h.tokens) + 1), rel_tol=1e-5)


def test_output_length_limit_forces_eos():
    table = [dist(0, 0, 0.0, 1.0, 0.0)]  # never ends by itself
    model = ScriptedModel(table)
    src = torch.tensor([[3, 3, 2]])
    assert greedy_search(model, src, IDS, max_len_a=0, max_len_b=4) == [[3, 3, 3]]
    hyps = beam_search(model, src, IDS, beam_size=3, max_len_a=0, max_len_b=4)
    assert hyps[0][0].tokens == [3, 3, 3]


def test_beam_one_equals_greedy_on_a_real_model():
    model = small_model()
    src = torch.randint(3, 23, (5, 6))
    src[2, 3:] = 0
    greedy = greedy_search(model, src, IDS, max_len_b=8)
    beam = beam_search(model, src, IDS, beam_size=1, max_len_b=8)
    assert [h[0].tokens for h in beam] == greedy


def test_batched_beam_equals_one_sentence_at_a_time():
    model = small_model()
    src = torch.randint(3, 23, (4, 6))
    src[1, 2:] = 0
    src[3, 4:] = 0
    batched = beam_search(model, src, IDS, beam_size=4, max_len_b=8, n_best=2)
    for i in range(4):
        length = int((src[i] != 0).sum())
        alone = beam_search(
            model, src[i : i + 1, :length], IDS, beam_size=4, max_len_b=8, n_best=2
        )[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        for a, b in zip(batched[i], alone):
            assert math.isclose(a.score, b.score, rel_tol=1e-4, abs_tol=1e-5)


def test_beam_search_scores_are_the_model_log_probs():
    model = small_model()
    src = torch.randint(3, 23, (2, 5))
    hyps = beam_search(model, src, IDS, beam_size=3, length_penalty=0.0, max_len_b=6)
    compared = 0
    for i, nbest in enumerate(hyps):
        tokens = nbest[0].tokens
        tgt_in = torch.tensor([[IDS.bos] + tokens])
        tgt_out = torch.tensor([tokens + [IDS.eos]])
        with torch.no_grad():
            logits = model(src[i : i + 1], tgt_in)
        # The search never emits pad/bos: they leave the distribution before it is normalised.
        logits[..., [IDS.pad, IDS.bos]] = -math.inf
        log_probs = logits.log_softmax(-1)
        total = log_probs.gather(-1, tgt_out[..., None]).sum()
        at_limit = len(tokens) + 1 >= 5 * 1.5 + 6
        if not at_limit:
            assert math.isclose(nbest[0].score, float(total), rel_tol=1e-4)
            compared += 1
    assert compared, "every hypothesis reached the length limit: nothing was compared"


def _varied_batch():
    """Sentences of 1..7 tokens: with a short length limit they end at different steps."""
    src = torch.zeros(7, 7, dtype=torch.long)
    for i in range(7):
        src[i, : i + 1] = torch.randint(3, 23, (i + 1,))
    return src


def test_looking_for_done_sentences_less_often_changes_nothing():
    torch.manual_seed(0)
    model = small_model()
    src = _varied_batch()
    lengths = dict(max_len_a=1.0, max_len_b=2)
    greedy = greedy_search(model, src, IDS, check_every=1, **lengths)
    assert len({len(out) for out in greedy}) > 2  # the rows really end at different steps
    beam = beam_search(model, src, IDS, beam_size=3, n_best=3, check_every=1, **lengths)
    for every in (2, 3, 100):
        assert greedy_search(model, src, IDS, check_every=every, **lengths) == greedy
        again = beam_search(model, src, IDS, beam_size=3, n_best=3, check_every=every, **lengths)
        for ours, ref in zip(again, beam):
            assert [h.tokens for h in ours] == [h.tokens for h in ref]
            for a, b in zip(ours, ref):
                assert math.isclose(a.score, b.score, rel_tol=1e-5, abs_tol=1e-6)


def test_step_loop_reads_the_host_only_every_check_interval(monkeypatch):
    torch.manual_seed(0)
    model = small_model()
    src = _varied_batch()
    reads = []
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or real_bool(t))
    lengths = dict(max_len_a=1.0, max_len_b=10)  # up to 17 steps
    greedy_search(model, src, IDS, check_every=8, **lengths)
    assert 0 < len(reads) <= 2 * 3  # steps 8, 16 and the last: at most two reads each
    reads.clear()
    beam_search(model, src, IDS, beam_size=3, check_every=8, **lengths)
    assert 0 < len(reads) <= 2 * 3


def test_check_every_must_be_positive():
    with pytest.raises(ValueError, match="check_every"):
        greedy_search(small_model(), torch.tensor([[3, 2]]), IDS, check_every=0)


def test_ids_never_to_output_are_never_output():
    # V = 6: pad bos eos a(3) b(4) tag(5); the model would rather say the tag.
    table = [dist(0, 0, 0.05, 0.2, 0.15, 0.6), dist(0, 0, 0.3, 0.05, 0.05, 0.6)]
    ids = SpecialIds(pad=0, bos=1, eos=2, never=(5,))
    src = torch.tensor([[3, 3, 2]])
    assert greedy_search(ScriptedModel(table), src, ids) == [[3]]
    assert 5 in greedy_search(ScriptedModel(table), src, IDS)[0]  # not banned: taken
    for hyp in beam_search(ScriptedModel(table), src, ids, beam_size=3, n_best=3)[0]:
        assert 5 not in hyp.tokens
