"""Streaming training data: bounded windows, every pair once per epoch, exact resume."""

import dataclasses
import json

import datasets
import pytest
import torch

from mt.config import DataConfig
from mt.data.corpus import filter_training_pairs, load_split, tokenize
from mt.data.streaming import StreamingTrainData, stream_pairs
from tests.conftest import small_run, straight_and_resumed, write_corpus


def streamed(tmp_path, **data):
    cfg = small_run(tmp_path, max_steps=6, save_every_steps=1)
    cfg.data = dataclasses.replace(cfg.data, **{"streaming": True, "window_pairs": 60, **data})
    return cfg


def test_windows_are_bounded_and_cover_every_pair_once(tmp_path, tokenizer):
    cfg = streamed(tmp_path).data
    data = StreamingTrainData(cfg, tokenizer)
    windows = list(data.windows())
    assert len(windows) == 4 and all(len(w) <= 60 for w in windows)  # 200 raw pairs, by 60
    # The same pairs as the in-memory path keeps, in corpus order.
    whole, stats = filter_training_pairs(
        tokenize(load_split(cfg, "train"), tokenizer),
        max_tokens=cfg.max_tokens,
        max_len_ratio=cfg.max_len_ratio,
    )
    assert [ids for w in windows for ids in w.src_ids] == whole["src_ids"]
    assert [ids for w in windows for ids in w.tgt_ids] == whole["tgt_ids"]
    assert dataclasses.asdict(data.filter_stats) == dataclasses.asdict(stats)
    last = list(data.windows(skip=3))  # resuming skips windows without tokenising them
    assert len(last) == 1 and last[0].src_ids == windows[3].src_ids


def test_filtering_is_counted_per_epoch(tmp_path, tokenizer):
    corpus = tmp_path / "c"
    write_corpus(corpus, "train", {"xx": ["a b", "", "c d e"], "yy": ["x", "y", ""]})
    cfg = DataConfig(dir=str(corpus), src_lang="xx", tgt_lang="yy", window_pairs=2)
    data = StreamingTrainData(cfg, tokenizer)
    assert sum(len(w) for w in data.windows()) == 1
    assert (data.filter_stats.kept, data.filter_stats.empty) == (1, 2)
    list(data.windows())  # a second epoch counts afresh
    assert (data.filter_stats.kept, data.filter_stats.empty) == (1, 2)


def test_worker_processes_tokenise_like_the_main_process(tmp_path, tokenizer):
    cfg = streamed(tmp_path).data
    one = StreamingTrainData(cfg, tokenizer)
    pool = StreamingTrainData(dataclasses.replace(cfg, num_proc=2), tokenizer)
    try:
        for a, b in zip(one.windows(), pool.windows(), strict=True):
            assert a.src_ids == b.src_ids and a.tgt_ids == b.tgt_ids
    finally:
        pool.close()


def test_streamed_run_resumes_exactly(tmp_path):
    cfg = streamed(tmp_path, window_pairs=8)  # 3 or 4 batches a window
    a, b = straight_and_resumed(cfg, tmp_path, stop_at=4)
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    assert a["progress"]["window_in_epoch"] >= 1  # the run crossed windows
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_hub_dataset_is_streamed(tmp_path, monkeypatch):
    rows = [{"translation": {"de": f"satz {i}", "en": f"sentence {i}"}} for i in range(5)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = datasets.load_dataset
    calls = []

    def fake_hub(name, config=None, *, split, streaming=False, cache_dir=None):
        calls.append((name, config, split, streaming))
        return real("json", data_files=str(path), split="train", streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    cfg = DataConfig(hub_name="someone/corpus", hub_config="de-en", streaming=True)
    assert list(stream_pairs(cfg, "train"))[:2] == [
        ("satz 0", "sentence 0"),
        ("satz 1", "sentence 1"),
    ]
    assert calls == [("someone/corpus", "de-en", "train", True)]
    with pytest.raises(ValueError, match="row 1: expected a 'translation' field with 'fr'"):
        list(stream_pairs(dataclasses.replace(cfg, src_lang="fr"), "train"))
