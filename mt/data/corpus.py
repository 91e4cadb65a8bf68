"""Parallel data in memory: load (local files or a hub dataset), clean, tokenise, filter.

Everything goes through Hugging Face ``datasets``: local files are read once into an Arrow
cache keyed by their path, size and modification time, and tokenisation is a cached ``.map``,
so a second run on the same corpus and tokenizer starts without re-reading or re-encoding.

Legend: B batch, S source length, T target length.
"""

import gzip
import hashlib
import logging
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import datasets
import numpy as np

from mt.config import DataConfig
from mt.data.batching import ParallelData
from mt.data.subword_sampling import SampledTrainData
from mt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)
datasets.disable_progress_bars()


# ----------------------------------------------------------------------------------------------
# Locating and reading raw text


def split_path(directory: str | Path, split: str, lang: str) -> Path | None:
    """``{split}.{lang}`` or ``{split}.{lang}.gz`` in ``directory``, whichever exists."""
    for suffix in ("", ".gz"):
        path = Path(directory) / f"{split}.{lang}{suffix}"
        if path.is_file():
            return path
    return None


def ensure_split_files(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """The source and target files of ``split``, downloading them if a URL is configured."""
    paths = [split_path(cfg.dir, split, lang) for lang in (cfg.src_lang, cfg.tgt_lang)]
    if None in paths and cfg.download_url:
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if split_path(cfg.dir, split, lang) is None:
                _download(f"{cfg.download_url}/{split}.{lang}.gz", Path(cfg.dir), split, lang)
        paths = [split_path(cfg.dir, split, lang) for lang in (cfg.src_lang, cfg.tgt_lang)]
    if None in paths:
        directory = Path(cfg.dir)
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise FileNotFoundError(
            f"split {split!r} of data.dir={cfg.dir}: expected {split}.{cfg.src_lang}[.gz] and "
            f"{split}.{cfg.tgt_lang}[.gz]; found {found or 'no files (folder missing)'}. "
            "Put the files there (one sentence per line, line i translating line i), or set "
            "data.dir / data.src_lang / data.tgt_lang / data.*_split to match them."
        )
    return paths[0], paths[1]


def _download(url: str, directory: Path, split: str, lang: str) -> None:
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"data.dir={directory} is a file: give the folder of the corpus files")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{split}.{lang}.gz"
    tmp = target.with_suffix(".gz.part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"{target} is missing and could not be downloaded from {url} ({err}). "
            f"Offline? Copy the corpus files into {directory}/ ({split}.{lang}.gz etc.)."
        ) from None
    tmp.replace(target)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


# C0/C1 control characters (tab included) and Unicode line/paragraph separators: each becomes
# a space, so no character can break the one-sentence-per-line structure downstream.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_line(line: str) -> str:
    """Drop a BOM and the line ending, replace control characters, trim outer whitespace."""
    return _CONTROL.sub(" ", line.lstrip("\ufeff")).strip()


def _decode(raw: bytes, path: str, line_number: int, invalid_utf8: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if invalid_utf8 == "replace":
            return raw.decode("utf-8", errors="replace")
        raise ValueError(
            f"{path}, line {line_number}: invalid UTF-8 (byte {err.object[err.start]:#04x} at "
            f"column {err.start + 1}); fix the file, or set data.invalid_utf8=replace to "
            "replace such bytes with U+FFFD"
        ) from None


def read_pairs(src_path: str, tgt_path: str, invalid_utf8: str = "error") -> Iterator[dict]:
    """Yield cleaned ``{"src", "tgt"}`` line pairs; raise if the files differ in line count or
    (with ``invalid_utf8="error"``) on a line that is not UTF-8, naming file and line."""
    with _open_binary(Path(src_path)) as fs, _open_binary(Path(tgt_path)) as ft:
        for n, (src, tgt) in enumerate(zip_longest(fs, ft), start=1):
            if src is None or tgt is None:
                n_src, n_tgt = _count_lines(Path(src_path)), _count_lines(Path(tgt_path))
                raise ValueError(
                    f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: "
                    "parallel files must have one line per sentence pair"
                )
            yield {
                "src": clean_line(_decode(src, src_path, n, invalid_utf8)),
                "tgt": clean_line(_decode(tgt, tgt_path, n, invalid_utf8)),
            }


def _count_lines(path: Path) -> int:
    with _open_binary(path) as f:
        return sum(1 for _ in f)


def _file_fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def load_split(cfg: DataConfig, split: str) -> datasets.Dataset:
    """A split as a Dataset with string columns ``src`` and ``tgt``."""
    if cfg.hub_name:
        return _load_hub_split(cfg, split)
    src_path, tgt_path = ensure_split_files(cfg, split)
    try:
        if next(read_pairs(str(src_path), str(tgt_path), cfg.invalid_utf8), None) is None:
            raise ValueError(
                f"split {split!r} is empty: {src_path} and {tgt_path} hold no lines. Put "
                "sentence pairs in them, or point data.*_split / data.dir at files that have some"
            )
        ds = datasets.Dataset.from_generator(
            read_pairs,
            gen_kwargs={
                "src_path": str(src_path),
                "tgt_path": str(tgt_path),
                "invalid_utf8": cfg.invalid_utf8,
            },
            cache_dir=cfg.cache_dir,
            fingerprint=_file_fingerprint(src_path, tgt_path) + cfg.invalid_utf8,
        )
    except (OSError, EOFError) as err:  # e.g. a truncated .gz, met by the first read
        raise ValueError(f"cannot read {src_path} / {tgt_path}: {err}") from None
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__
        if isinstance(cause, ValueError):  # our own messages name file and line already
            raise cause from None
        if isinstance(cause, (OSError, EOFError)):  # e.g. a truncated .gz
            raise ValueError(f"cannot read {src_path} / {tgt_path}: {cause}") from None
        raise
    if cfg.invalid_utf8 == "replace":
        replaced = sum("\ufffd" in a or "\ufffd" in b for a, b in zip(ds["src"], ds["tgt"]))
        if replaced:
            log.warning(
                "%s/%s: %d line pairs had invalid UTF-8 replaced by U+FFFD",
                cfg.dir,
                split,
                replaced,
            )
    return ds


def _load_hub_split(cfg: DataConfig, split: str) -> datasets.Dataset:
    """A hub dataset whose rows are ``{"translation": {src_lang: ..., tgt_lang: ...}}``."""
    ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=split, cache_dir=cfg.cache_dir)
    if "translation" not in ds.column_names:
        raise ValueError(
            f"hub dataset {cfg.hub_name!r} has columns {ds.column_names}, "
            "expected a 'translation' column of {language: sentence} dicts"
        )
    langs = set(ds[0]["translation"]) if len(ds) else set()
    if langs and not {cfg.src_lang, cfg.tgt_lang} <= langs:
        raise ValueError(
            f"hub dataset {cfg.hub_name!r} has languages {sorted(langs)}; "
            f"data.src_lang={cfg.src_lang!r} / data.tgt_lang={cfg.tgt_lang!r} must be among them"
        )
    return ds.map(
        _from_translation,
        batched=True,
        fn_kwargs={"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang},
        remove_columns=ds.column_names,
    )


def _from_translation(batch: dict, src_lang: str, tgt_lang: str) -> dict:
    pairs = batch["translation"]
    return {
        "src": [clean_line(p[src_lang]) for p in pairs],
        "tgt": [clean_line(p[tgt_lang]) for p in pairs],
    }


# ----------------------------------------------------------------------------------------------
# Tokenisation and filtering


_PROCESSORS: dict[bytes, Tokenizer] = {}


def encode_batch(batch: dict, model_proto: bytes, src_prefix: tuple[int, ...] = ()) -> dict:
    tokenizer = _PROCESSORS.get(model_proto)
    if tokenizer is None:
        tokenizer = _PROCESSORS[model_proto] = Tokenizer(model_proto)
    src = tokenizer.encode(batch["src"])
    if src_prefix:  # a multilingual run's target-language tag (an empty source stays empty)
        src = [list(src_prefix) + ids if ids else ids for ids in src]
    return {"src_ids": src, "tgt_ids": tokenizer.encode(batch["tgt"])}


def tokenize(
    ds: datasets.Dataset,
    tokenizer: Tokenizer,
    num_proc: int = 1,
    src_prefix: tuple[int, ...] = (),
) -> datasets.Dataset:
    """Add ``src_ids`` / ``tgt_ids`` (cached by the dataset and tokenizer fingerprints), in
    ``num_proc`` processes; ``src_prefix`` ids (a language tag) start every source."""
    return ds.map(
        encode_batch,
        batched=True,
        fn_kwargs={"model_proto": tokenizer.model_proto, "src_prefix": tuple(src_prefix)},
        num_proc=num_proc if num_proc > 1 and len(ds) >= 10 * num_proc else None,
    )


@dataclass
class FilterStats:
    kept: int
    empty: int
    too_long: int
    bad_ratio: int


def filter_training_pairs(
    ds: datasets.Dataset, *, max_tokens: int, max_len_ratio: float
) -> tuple[datasets.Dataset, FilterStats]:
    """Drop empty pairs, pairs over ``max_tokens`` and pairs with an extreme length ratio."""
    keep, stats = filter_lengths(
        [len(x) for x in ds["src_ids"]],
        [len(x) for x in ds["tgt_ids"]],
        max_tokens=max_tokens,
        max_len_ratio=max_len_ratio,
    )
    if stats.kept == 0:
        raise ValueError("no training pairs are left after dropping empty and too long pairs")
    if stats.kept == len(ds):
        return ds, stats
    return ds.select(keep), stats


def filter_lengths(
    src_lengths: list[int], tgt_lengths: list[int], *, max_tokens: int, max_len_ratio: float
) -> tuple[np.ndarray, FilterStats]:
    """Indices of the pairs to keep, and what was dropped for which reason."""
    src_lens, tgt_lens = np.array(src_lengths, dtype=np.int64), np.array(tgt_lengths, np.int64)
    empty = (src_lens == 0) | (tgt_lens == 0)
    too_long = ~empty & ((src_lens > max_tokens) | (tgt_lens > max_tokens))
    longer = np.maximum(src_lens, tgt_lens)
    shorter = np.maximum(np.minimum(src_lens, tgt_lens), 1)
    bad_ratio = ~empty & ~too_long & (shorter > 5) & (longer / shorter > max_len_ratio)
    keep = ~(empty | too_long | bad_ratio)
    stats = FilterStats(
        int(keep.sum()), int(empty.sum()), int(too_long.sum()), int(bad_ratio.sum())
    )
    return np.flatnonzero(keep), stats


# ----------------------------------------------------------------------------------------------
# Preparing a run's data: tokenizer trained on the training split, every split tokenised


@dataclass
class EvalSet:
    """A split kept as text (for BLEU against the raw references) and as ids (for the loss)."""

    name: str
    sources: list[str]
    references: list[str]
    ids: ParallelData
    direction: str | None = None
    """``de-en`` in a multilingual run (its metrics are named by it); None: the run's one
    direction."""
    tgt_lang: str | None = None
    """The target tag the sources are translated with (None: untagged)."""


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    # or StreamingTrainData (data.streaming) or SampledTrainData (data.subword_alpha): all serve
    # ``windows()``
    train: ParallelData
    val: list[EvalSet]  # one per direction
    test: list[EvalSet]
    filter_stats: FilterStats


def load_eval_set(
    cfg: DataConfig, split: str, tokenizer: Tokenizer, tgt_lang: str | None = None
) -> EvalSet:
    """``split`` of the direction ``cfg.src_lang`` -> ``cfg.tgt_lang``; with ``tgt_lang``, its
    sources carry that language's tag (a multilingual run)."""
    prefix = (tokenizer.language_tags[tgt_lang],) if tgt_lang else ()
    ds = tokenize(load_split(cfg, split), tokenizer, cfg.num_proc, prefix)
    return EvalSet(
        split,
        ds["src"],
        ds["tgt"],
        ParallelData.from_dataset(ds, tokenizer),
        direction=f"{cfg.src_lang}-{cfg.tgt_lang}" if tgt_lang else None,
        tgt_lang=tgt_lang,
    )


def prepare_in_memory(
    cfg: DataConfig, *, seed: int = 1, tokenizer: Tokenizer | None = None
) -> PreparedData:
    """Load all splits into memory, train the joint SentencePiece model (unless ``tokenizer``
    is given, as when resuming), tokenise and filter. (A run calls :func:`mt.data.prepare.
    prepare_data`, which also knows the streamed alternative.)"""
    train = load_split(cfg, cfg.train_split)
    if cfg.max_train_pairs is not None and cfg.max_train_pairs < len(train):
        train = train.select(range(cfg.max_train_pairs))
    texts = (text for column in ("src", "tgt") for text in train[column])
    tokenizer = tokenizer or Tokenizer.train(
        texts,
        vocab_size=cfg.vocab_size,
        model_type=cfg.spm_model_type,
        max_sentences=cfg.spm_max_sentences,
        seed=seed,
    )
    train_ids, stats = filter_training_pairs(
        tokenize(train, tokenizer, cfg.num_proc),
        max_tokens=cfg.max_tokens,
        max_len_ratio=cfg.max_len_ratio,
    )
    log_filter_stats(stats, cfg)
    return PreparedData(
        tokenizer=tokenizer,
        train=training_data(train_ids, tokenizer, cfg, seed),
        val=[load_eval_set(cfg, cfg.val_split, tokenizer)],
        test=[load_eval_set(cfg, cfg.test_split, tokenizer)],
        filter_stats=stats,
    )


def training_data(
    ds: datasets.Dataset,
    tokenizer: Tokenizer,
    cfg: DataConfig,
    seed: int,
    src_tags: np.ndarray | None = None,
) -> ParallelData | SampledTrainData:
    """The tokenised, filtered training pairs in memory; with ``data.subword_alpha``, segmented
    anew each epoch (``src_tags``: per pair, the language tag its source starts with)."""
    fixed = ParallelData.from_dataset(ds, tokenizer)
    if cfg.subword_alpha == 0:
        return fixed
    return SampledTrainData(
        fixed,
        list(ds["src"]),
        list(ds["tgt"]),
        alpha=cfg.subword_alpha,
        nbest=cfg.subword_nbest,
        seed=seed,
        max_tokens=cfg.max_tokens,
        src_tags=src_tags,
    )


def log_filter_stats(stats: FilterStats, cfg: DataConfig) -> None:
    log.info(
        "training pairs: %d kept, %d empty, %d longer than %d tokens, %d with length ratio > %g",
        stats.kept,
        stats.empty,
        stats.too_long,
        cfg.max_tokens,
        stats.bad_ratio,
        cfg.max_len_ratio,
    )
