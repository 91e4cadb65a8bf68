"""Reading parallel files, cleaning, tokenising, token-budget batching, collation."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from mt.config import DataConfig
from mt.data.batching import ParallelData, TokenIds, collate, pad, token_batches
from mt.data.corpus import (
    ensure_split_files,
    filter_training_pairs,
    load_split,
    tokenize,
)
from tests.conftest import synthetic_sentences, write_corpus


def folder_config(tmp_path, **kw):
    return DataConfig(
        dir=str(tmp_path / "corpus"),
        src_lang="xx",
        tgt_lang="yy",
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


@pytest.mark.parametrize("gz", [False, True])
def test_load_split_reads_plain_and_gzip_files(tmp_path, gz):
    cfg = folder_config(tmp_path)
    write_corpus(
        tmp_path / "corpus",
        "train",
        {"xx": ["\ufeffa b", "c d\r", "  e  "], "yy": ["1", "2", "3"]},
        gz=gz,
    )
    ds = load_split(cfg, "train")
    assert ds["src"] == ["a b", "c d", "e"]  # BOM, CR and outer spaces removed
    assert ds["tgt"] == ["1", "2", "3"]


def test_different_line_counts_name_both_files_and_counts(tmp_path):
    cfg = folder_config(tmp_path)
    write_corpus(tmp_path / "corpus", "train", {"xx": ["a", "b", "c"], "yy": ["1", "2"]})
    with pytest.raises(ValueError, match=r"train\.xx has 3 lines but .*train\.yy has 2"):
        load_split(cfg, "train")


def test_missing_split_lists_the_files_found(tmp_path):
    cfg = folder_config(tmp_path)
    write_corpus(tmp_path / "corpus", "train", {"xx": ["a"], "yy": ["1"]})
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*train\.xx"):
        ensure_split_files(cfg, "val")


def test_offline_download_failure_says_where_to_put_files(tmp_path):
    cfg = folder_config(tmp_path, download_url="http://127.0.0.1:9/nothing")
    with pytest.raises(FileNotFoundError, match="Copy the corpus files into"):
        ensure_split_files(cfg, "train")


def test_tokenize_and_filter(tmp_path, tokenizer):
    cfg = folder_config(tmp_path)
    src = synthetic_sentences(20, seed=1)
    tgt = synthetic_sentences(20, seed=2)
    src[3], tgt[5] = "", ""
    src[7] = " ".join([src[7]] * 100)  # far too long
    write_corpus(tmp_path / "corpus", "train", {"xx": src, "yy": tgt})
    ds = tokenize(load_split(cfg, "train"), tokenizer)
    assert ds["src_ids"][0] == tokenizer.encode([src[0]])[0]
    kept, stats = filter_training_pairs(ds, max_tokens=300, max_len_ratio=3.0)
    assert (stats.empty, stats.too_long) == (2, 1)
    assert stats.kept == len(kept) == 17 - stats.bad_ratio


def test_token_batches_respect_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    src_lens = rng.integers(1, 40, size=500)
    tgt_lens = rng.integers(1, 40, size=500)
    batches = token_batches(src_lens, tgt_lens, 300, rng=np.random.default_rng(1))
    seen = np.sort(np.concatenate(batches))
    assert np.array_equal(seen, np.arange(500))
    for b in batches:
        width = int(np.maximum(src_lens[b], tgt_lens[b]).max()) + 1
        assert width * len(b) <= 300 or len(b) == 1
    padded = sum(len(b) * (tgt_lens[b].max() + 1) for b in batches)
    assert (tgt_lens + 1).sum() / padded > 0.9  # similar lengths: little padding


def test_token_batches_keep_padding_low_on_both_sides():
    """Parallel-corpus-like lengths (target close to source): under 5% padding overall."""
    rng = np.random.default_rng(0)
    src_lens = rng.integers(4, 40, size=20_000)
    tgt_lens = np.clip(src_lens + rng.integers(-4, 5, size=20_000), 1, None)
    batches = token_batches(src_lens, tgt_lens, 4096, rng=np.random.default_rng(1))
    real = (src_lens + 1).sum() + (tgt_lens + 1).sum()
    padded = sum(len(b) * (src_lens[b].max() + tgt_lens[b].max() + 2) for b in batches)
    assert 1 - real / padded < 0.05
    tgt_per_batch = (tgt_lens + 1).sum() / len(batches)
    assert tgt_per_batch > 0.6 * 4096  # batches still fill most of the budget


def test_token_batches_of_sources_alone_budget_the_source_side():
    """Decoding batches (no targets yet): the budget counts source positions, nothing else."""
    rng = np.random.default_rng(0)
    src_lens = rng.integers(1, 60, size=400)
    batches = token_batches(src_lens, None, 500)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(400))
    for b in batches:
        assert len(b) * (int(src_lens[b].max()) + 1) <= 500 or len(b) == 1
    padded = sum(len(b) * (src_lens[b].max() + 1) for b in batches)
    assert (src_lens + 1).sum() / padded > 0.9
    assert len(batches) < 1.3 * (src_lens + 1).sum() / 500  # not needlessly small


def test_collate_shapes_and_special_tokens(tokenizer):
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], tokenizer)
    eos, bos, pad = tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id
    assert batch.src.tolist() == [[5, 6, 7, eos], [8, eos, pad, pad]]
    assert batch.tgt_in.tolist() == [[bos, 9, 10, pad], [bos, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[9, 10, eos, pad], [11, 12, 13, eos]]
    assert batch.n_tgt_tokens == 7


def test_pad_frames_and_pads_each_row():
    assert pad([[5, 6], [], [7]], 0).tolist() == [[5, 6], [0, 0], [7, 0]]
    framed = pad([[5, 6], [], [7]], 0, prefix=2, suffix=3).tolist()
    assert framed == [[2, 5, 6, 3], [2, 3, 0, 0], [2, 7, 3, 0]]


def test_parallel_data_batches_cover_every_pair(tokenizer):
    src = tokenizer.encode(synthetic_sentences(50, seed=3))
    tgt = tokenizer.encode(synthetic_sentences(50, seed=4))
    data = ParallelData(src, tgt, tokenizer)
    batches = data.batches(200, np.random.default_rng(0))
    assert sum(b.n_tgt_tokens for b in batches) == sum(len(t) + 1 for t in tgt)


def test_packed_ids_of_a_filtered_dataset_equal_its_rows_and_collate_the_same(tmp_path, tokenizer):
    """from_dataset packs the ids (TokenIds): the same rows as the dataset, a filter's indices
    respected, and batches identical to collating the plain lists."""
    cfg = folder_config(tmp_path)
    src, tgt = synthetic_sentences(40, seed=5), synthetic_sentences(40, seed=6)
    src[4] = ""  # filtered out: the dataset gets an indices mapping
    write_corpus(tmp_path / "corpus", "train", {"xx": src, "yy": tgt})
    ds, _ = filter_training_pairs(
        tokenize(load_split(cfg, "train"), tokenizer), max_tokens=300, max_len_ratio=9.0
    )
    rows_src, rows_tgt = list(ds["src_ids"]), list(ds["tgt_ids"])
    data = ParallelData.from_dataset(ds, tokenizer)
    assert isinstance(data.src_ids, TokenIds) and len(data.src_ids) == len(rows_src) == 39
    assert data.src_ids == rows_src and data.tgt_ids == rows_tgt
    assert data.src_ids[-1] == rows_src[-1] and data.tgt_ids[2:5] == rows_tgt[2:5]
    assert data.src_lens.tolist() == [len(r) for r in rows_src]
    plain = ParallelData(rows_src, rows_tgt, tokenizer)
    for group in data.batch_groups(120, np.random.default_rng(0)):
        packed, lists = data.collate(group), plain.collate(group)
        for name in ("src", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(packed, name), getattr(lists, name)), name
        assert packed.n_tgt_tokens == lists.n_tgt_tokens


def packed(rows: list[list[int]]) -> TokenIds:
    return TokenIds.from_arrow(pa.chunked_array([rows[:1], rows[1:]]))  # two chunks


def test_token_ids_behave_like_a_list_of_lists():
    rows = [[3, 1], [], [7, 8, 9], [2]]
    ids = packed(rows)
    assert len(ids) == 4 and list(ids) == rows and ids == rows and ids != rows[:3]
    assert ids[-2] == [7, 8, 9] and ids[::2] == [[3, 1], [7, 8, 9]]
    assert ids == packed(rows) and ids != packed(rows[::-1])
    flat, lengths = ids.take(np.array([2, 0, 1]))
    assert flat.tolist() == [7, 8, 9, 3, 1] and lengths.tolist() == [3, 2, 0]
    with pytest.raises(IndexError):
        ids[4]


def test_hub_style_dataset_with_translation_column(tmp_path):
    """The hub path (``datasets.load_dataset``) on a local dataset folder of the same shape."""
    folder = tmp_path / "hubds"
    folder.mkdir()
    rows = [{"translation": {"fr": f"bonjour {i}", "en": f"hello {i}"}} for i in range(5)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    cfg = DataConfig(
        hub_name=str(folder), src_lang="en", tgt_lang="fr", cache_dir=str(tmp_path / "cache")
    )
    ds = load_split(cfg, "train")
    assert ds["src"] == [f"hello {i}" for i in range(5)]
    assert ds["tgt"][2] == "bonjour 2"
    wrong = DataConfig(
        hub_name=str(folder), src_lang="de", tgt_lang="fr", cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError, match=r"languages \['en', 'fr'\]"):
        load_split(wrong, "test")


def test_invalid_utf8_names_file_and_line(tmp_path):
    cfg = folder_config(tmp_path)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, "train", {"xx": ["a", "b", "c"], "yy": ["1", "2", "3"]})
    (corpus / "train.yy").write_bytes(b"1\n2\xff\xfe\n3\n")
    with pytest.raises(ValueError, match=r"train\.yy, line 2: invalid UTF-8.*invalid_utf8=replace"):
        load_split(cfg, "train")
    replaced = load_split(folder_config(tmp_path, invalid_utf8="replace"), "train")
    assert replaced["tgt"] == ["1", "2\ufffd\ufffd", "3"]


def test_control_characters_crlf_and_separators_are_cleaned(tmp_path):
    cfg = folder_config(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "train.xx").write_bytes("a\x00b\r\nc\u2028d\r\ne\tf\x1b\n".encode())
    (corpus / "train.yy").write_bytes(b"1\r\n2\r\n3\n")
    ds = load_split(cfg, "train")
    assert ds["src"] == ["a b", "c d", "e f"]
    assert ds["tgt"] == ["1", "2", "3"]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    cfg = folder_config(tmp_path)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, "train", {"xx": ["a"] * 2000, "yy": ["b"] * 2000}, gz=True)
    data = (corpus / "train.xx.gz").read_bytes()
    (corpus / "train.xx.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*train\.xx\.gz"):
        load_split(cfg, "train")


@pytest.mark.parametrize("gz", [False, True])
def test_an_empty_split_names_its_files(tmp_path, gz):
    from mt.data.corpus import load_split

    write_corpus(tmp_path, "val", {"xx": [], "yy": []}, gz=gz)
    cfg = DataConfig(dir=str(tmp_path), src_lang="xx", tgt_lang="yy", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"split 'val' is empty: .*val\.xx.* hold no lines"):
        load_split(cfg, "val")


def test_a_file_given_as_the_corpus_folder_is_named(tmp_path):
    from mt.data.corpus import ensure_split_files

    (tmp_path / "corpus").write_text("")
    cfg = DataConfig(dir=str(tmp_path / "corpus"), download_url="http://127.0.0.1:9/none")
    with pytest.raises(ValueError, match="data.dir=.*corpus is a file: give the folder"):
        ensure_split_files(cfg, "val")
