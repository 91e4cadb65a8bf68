"""Subword regularisation: sampled segmentations that keep the text, vary by epoch, are
reproducible from (seed, epoch) for exact resume, and reach the training batches."""

import dataclasses
import threading

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.checks import validate_run_config
from mt.data.batching import ParallelData
from mt.data.prepare import prepare_data
from mt.data.streaming import StreamingTrainData
from mt.data.subword_sampling import SampledTrainData, sample_encode
from mt.data.tokenizer import Tokenizer
from mt.loggers import ListLogger
from mt.training.trainer import Trainer
from tests.conftest import small_run, straight_and_resumed, synthetic_sentences


def sampled_data(tokenizer, texts, *, max_tokens=250, seed=1, alpha=0.1):
    fixed = ParallelData(tokenizer.encode(texts), tokenizer.encode(texts[::-1]), tokenizer)
    return SampledTrainData(
        fixed, texts, texts[::-1], alpha=alpha, nbest=-1, seed=seed, max_tokens=max_tokens
    )


def test_sampling_keeps_the_text_and_varies_the_pieces(tokenizer):
    texts = synthetic_sentences(50, seed=3)
    fixed = tokenizer.encode(texts)
    a = sample_encode(tokenizer, texts, alpha=0.1, nbest=-1, seed=5)
    assert tokenizer.decode(a) == texts  # another segmentation of the same sentence
    assert a != fixed
    assert sum(map(len, a)) > sum(map(len, fixed))  # flat sampling: shorter pieces
    assert sample_encode(tokenizer, texts, alpha=0.1, nbest=-1, seed=5) == a
    assert sample_encode(tokenizer, texts, alpha=0.1, nbest=-1, seed=6) != a


def test_bpe_dropout_keeps_the_text(tmp_path):
    texts = synthetic_sentences(300, seed=4)
    bpe = Tokenizer.train(texts, vocab_size=300, model_type="bpe")
    sampled = sample_encode(bpe, texts[:40], alpha=0.3, nbest=-1, seed=1)
    assert bpe.decode(sampled) == texts[:40] and sampled != bpe.encode(texts[:40])


def test_epochs_differ_and_are_reproducible(tokenizer):
    texts = synthetic_sentences(60, seed=7)
    data = sampled_data(tokenizer, texts)
    epochs = [data.epoch_data(e) for e in range(3)]  # epochs 1, 2 come from the prefetch
    assert epochs[0].src_ids != epochs[1].src_ids != epochs[2].src_ids
    assert tokenizer.decode(epochs[2].src_ids) == texts
    assert tokenizer.decode(epochs[2].tgt_ids) == texts[::-1]
    # A resumed run starts at any epoch without the earlier ones: the same segmentation.
    fresh = sampled_data(tokenizer, texts)
    assert fresh.epoch_data(2).src_ids == epochs[2].src_ids
    assert fresh.epoch_data(0).tgt_ids == epochs[0].tgt_ids
    # ... and a different seed gives other segmentations.
    assert sampled_data(tokenizer, texts, seed=2).epoch_data(0).src_ids != epochs[0].src_ids
    [window] = list(data.windows(epoch=1))
    assert window.src_ids == epochs[1].src_ids and list(data.windows(skip=1, epoch=1)) == []
    data.close()
    assert data.epoch_data(1).src_ids == epochs[1].src_ids  # usable again after close


def test_too_long_sampled_pairs_keep_their_fixed_encoding(tokenizer):
    texts = synthetic_sentences(40, seed=8)
    limit = max(len(ids) for ids in tokenizer.encode(texts))
    data = sampled_data(tokenizer, texts, max_tokens=limit)
    epoch = data.epoch_data(0)
    assert max(len(ids) for ids in epoch.src_ids + epoch.tgt_ids) <= limit
    fallbacks = sum(s == f for s, f in zip(epoch.src_ids, data.fixed.src_ids))
    assert fallbacks > 0  # flat sampling made some sentences longer than the limit
    data.close()


def test_prepared_training_data_is_sampled_and_eval_splits_are_not(tmp_path):
    cfg = small_run(tmp_path).data
    plain = prepare_data(cfg)
    sampled = prepare_data(dataclasses.replace(cfg, subword_alpha=0.1), tokenizer=plain.tokenizer)
    assert isinstance(sampled.train, SampledTrainData) and len(sampled.train) == len(plain.train)
    assert sampled.train.src_ids == plain.train.src_ids  # the deterministic fallback
    one_pass = list(sampled.train.batches(1000))  # the benchmark's use: nothing runs ahead
    assert sum(len(b.src) for b in one_pass) == len(plain.train)
    assert not [t for t in threading.enumerate() if t.name.startswith("mt-subwords")]
    assert next(sampled.train.windows(epoch=0)).src_ids != plain.train.src_ids
    assert sampled.val[0].ids.src_ids == plain.val[0].ids.src_ids
    assert sampled.test[0].ids.tgt_ids == plain.test[0].ids.tgt_ids
    sampled.train.close()


def test_streamed_windows_are_sampled_per_epoch_and_window(tmp_path):
    cfg = dataclasses.replace(small_run(tmp_path).data, streaming=True, window_pairs=60)
    # Trained on this corpus's words, so that its sentences have several segmentations.
    tokenizer = Tokenizer.train(
        synthetic_sentences(200, seed=1) + synthetic_sentences(200, seed=2), vocab_size=300
    )
    plain = list(StreamingTrainData(cfg, tokenizer).windows())
    data = StreamingTrainData(dataclasses.replace(cfg, subword_alpha=0.1), tokenizer, seed=3)
    first, second = list(data.windows(epoch=0)), list(data.windows(epoch=1))
    assert len(first) == len(second) == len(plain) == 4
    for a, b, p in zip(first, second, plain):
        assert tokenizer.decode(a.src_ids) == tokenizer.decode(p.src_ids)  # the same pairs
        assert tokenizer.decode(b.tgt_ids) == tokenizer.decode(p.tgt_ids)

    def epoch_ids(windows):
        return [ids for w in windows for ids in w.src_ids + w.tgt_ids]

    # Varied by epoch, and not the deterministic segmentation. (Compared over whole epochs: a
    # window of ~40 short sentences may, by chance, come out as in another epoch.)
    assert epoch_ids(first) != epoch_ids(second) != epoch_ids(plain)
    assert epoch_ids(first) != epoch_ids(plain)
    # Resuming inside an epoch: the skipped-to window is segmented as in the whole epoch.
    [_, last] = list(data.windows(skip=2, epoch=1))
    assert last.src_ids == second[3].src_ids
    again = StreamingTrainData(dataclasses.replace(cfg, subword_alpha=0.1), tokenizer, seed=3)
    assert [w.tgt_ids for w in again.windows(epoch=1)] == [w.tgt_ids for w in second]


@pytest.mark.parametrize("streaming", [False, True])
def test_sampled_run_resumes_exactly_within_a_process(tmp_path, streaming):
    """Within one process an epoch's segmentation is a function of (seed, epoch). SentencePiece's
    sampler also draws on per-process state, so a run resumed in a new process samples other
    segmentations (tests/test_resume.py covers that case without sampling)."""
    cfg = small_run(tmp_path, max_steps=10, save_every_steps=1, batch_tokens=4000)
    cfg.data = dataclasses.replace(
        cfg.data, subword_alpha=0.2, streaming=streaming, window_pairs=100
    )
    a, b = straight_and_resumed(cfg, tmp_path, stop_at=5)
    assert a["progress"]["step"] == b["progress"]["step"] == 10
    assert a["progress"]["epoch"] >= 1  # the run crossed into a second segmentation
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    # Sampling changed what was trained on: not the weights of a plain run.
    plain = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, subword_alpha=0.0))
    Trainer(plain, tmp_path / "plain", logger=ListLogger()).fit()
    c = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert not torch.equal(a["model"]["embed.weight"], c["model"]["embed.weight"])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"subword_alpha": -0.1}, "data.subword_alpha=-0.1 must be 0"),
        ({"subword_alpha": 0.1, "spm_model_type": "char"}, "unigram and bpe models only"),
        ({"subword_alpha": 1.0, "spm_model_type": "bpe"}, "must be below 1"),
        ({"subword_alpha": 0.1, "subword_nbest": 0}, "data.subword_nbest=0"),
    ],
)
def test_bad_sampling_options_are_refused(tmp_path, data, message):
    cfg = small_run(tmp_path)
    cfg.data = dataclasses.replace(cfg.data, **data)
    with pytest.raises(ValueError, match=message):
        validate_run_config(cfg)
