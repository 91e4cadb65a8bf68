"""Training data larger than memory: read the corpus as a stream, a window at a time.

With ``data.streaming=true`` the training split is never loaded whole. Each epoch reads the
source/target files (or a hub dataset in ``datasets``' streaming mode) from the start and cuts
them into windows of ``data.window_pairs`` raw pairs. A window is tokenised by
``data.num_proc`` worker processes, filtered like the in-memory data, and served as
length-bucketed batches in a shuffled order (:class:`mt.data.batching.ParallelData`); then it is
dropped. Memory is bounded by two windows (the one in use and the next, prepared ahead),
whatever the corpus size.

Shuffling reaches within a window only: a corpus sorted by topic should be shuffled once on disk
(``paste src tgt | shuf | ...``) before training, as with other streaming toolkits.

Resuming: a window is defined by raw line counts, so the windows before the checkpoint's are
skipped by reading lines, without tokenising them.
"""

import logging
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice

import datasets

from mt.config import DataConfig
from mt.data.batching import ParallelData
from mt.data.corpus import (
    FilterStats,
    PreparedData,
    clean_line,
    encode_batch,
    ensure_split_files,
    filter_lengths,
    load_eval_set,
    read_pairs,
)
from mt.data.subword_sampling import resample
from mt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def stream_pairs(cfg: DataConfig, split: str) -> Iterator[tuple[str, str]]:
    """The cleaned (source, target) pairs of ``split``, read lazily, in corpus order."""
    if cfg.hub_name:
        ds = datasets.load_dataset(
            cfg.hub_name, cfg.hub_config, split=split, streaming=True, cache_dir=cfg.cache_dir
        )
        for n, row in enumerate(ds, start=1):
            pair = row.get("translation")
            if not isinstance(pair, dict) or cfg.src_lang not in pair or cfg.tgt_lang not in pair:
                raise ValueError(
                    f"hub dataset {cfg.hub_name!r}, row {n}: expected a 'translation' field "
                    f"with {cfg.src_lang!r} and {cfg.tgt_lang!r}, got {sorted(row)}"
                )
            yield clean_line(pair[cfg.src_lang]), clean_line(pair[cfg.tgt_lang])
        return
    src_path, tgt_path = ensure_split_files(cfg, split)
    for pair in read_pairs(str(src_path), str(tgt_path), cfg.invalid_utf8):
        yield pair["src"], pair["tgt"]


class StreamingTrainData:
    """The training split as a sequence of in-memory windows, re-read every epoch."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, *, seed: int = 1) -> None:
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.filter_stats = FilterStats(0, 0, 0, 0)  # of the current epoch, so far
        self._pool = None

    def __len__(self) -> int:
        raise TypeError("a streamed corpus has no known length")

    def raw_pairs(self) -> Iterator[tuple[str, str]]:
        pairs = stream_pairs(self.cfg, self.cfg.train_split)
        if self.cfg.max_train_pairs is not None:
            pairs = islice(pairs, self.cfg.max_train_pairs)
        return pairs

    def windows(self, *, skip: int = 0, epoch: int = 0) -> Iterator[ParallelData]:
        """One epoch: tokenised, filtered windows; the first ``skip`` are passed over unread.
        With ``data.subword_alpha`` each window is segmented by sampling, reproducibly from
        (seed, ``epoch``, window number); otherwise ``epoch`` is unused.

        The next window is read and tokenised in a background thread while the caller trains
        on the current one, so data preparation stays off the training's critical path (the
        tokenising work itself runs in C++ or in the worker processes, not under the GIL).
        """
        for name in ("kept", "empty", "too_long", "bad_ratio"):
            setattr(self.filter_stats, name, 0)  # in place: PreparedData shares this object
        pairs = self.raw_pairs()
        for _ in range(skip):
            if not list(islice(pairs, self.cfg.window_pairs)):
                return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-window") as ahead:
            number = skip
            upcoming = ahead.submit(self._next_window, pairs, [self.seed, epoch, number])
            while (window := upcoming.result()) is not None:
                number += 1
                upcoming = ahead.submit(self._next_window, pairs, [self.seed, epoch, number])
                if len(window):
                    yield window

    def _next_window(
        self, pairs: Iterator[tuple[str, str]], sampling_seed: list[int]
    ) -> ParallelData | None:
        """The next ``window_pairs`` raw pairs, tokenised and filtered (None at the end); with
        ``data.subword_alpha``, segmented by sampling from ``sampling_seed``."""
        raw = list(islice(pairs, self.cfg.window_pairs))
        if not raw:
            return None
        src_ids, tgt_ids = self.encode(raw)
        keep, stats = filter_lengths(
            [len(s) for s in src_ids],
            [len(t) for t in tgt_ids],
            max_tokens=self.cfg.max_tokens,
            max_len_ratio=self.cfg.max_len_ratio,
        )
        for name in ("kept", "empty", "too_long", "bad_ratio"):
            setattr(
                self.filter_stats, name, getattr(self.filter_stats, name) + getattr(stats, name)
            )
        window = ParallelData(
            [src_ids[i] for i in keep], [tgt_ids[i] for i in keep], self.tokenizer
        )
        if self.cfg.subword_alpha > 0:  # filtered on the deterministic encoding, then sampled
            window = resample(
                window,
                [raw[i][0] for i in keep],
                [raw[i][1] for i in keep],
                alpha=self.cfg.subword_alpha,
                nbest=self.cfg.subword_nbest,
                seed=sampling_seed,
                max_tokens=self.cfg.max_tokens,
            )
        return window

    def encode(self, pairs: list[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of a window, in ``num_proc`` processes when that is more than 1."""
        if self.cfg.num_proc <= 1:
            return (
                self.tokenizer.encode([s for s, _ in pairs]),
                self.tokenizer.encode([t for _, t in pairs]),
            )
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process running torch
            self._pool = ctx.Pool(self.cfg.num_proc)
        # The same worker function (and per-process tokenizer cache) as datasets' .map.
        encode = partial(encode_batch, model_proto=self.tokenizer.model_proto)
        chunk = max(1, len(pairs) // (4 * self.cfg.num_proc))
        chunks = (
            {
                "src": [s for s, _ in pairs[i : i + chunk]],
                "tgt": [t for _, t in pairs[i : i + chunk]],
            }
            for i in range(0, len(pairs), chunk)
        )
        src_ids: list[list[int]] = []
        tgt_ids: list[list[int]] = []
        for encoded in self._pool.imap(encode, chunks):
            src_ids += encoded["src_ids"]
            tgt_ids += encoded["tgt_ids"]
        return src_ids, tgt_ids

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


def sample_texts(pairs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Source and target sentences of a stream, for the tokenizer's reservoir sample."""
    for src, tgt in pairs:
        yield src
        yield tgt


def prepare_streaming(
    cfg: DataConfig, *, seed: int = 1, tokenizer: Tokenizer | None = None
) -> PreparedData:
    """Like :func:`mt.data.corpus.prepare_in_memory`, with the training split left on disk:
    SentencePiece learns from a reservoir sample of one pass over it
    (``data.spm_max_sentences``)."""
    if tokenizer is None:
        log.info("streaming: sampling the training split for SentencePiece")
        train_pairs = stream_pairs(cfg, cfg.train_split)
        if cfg.max_train_pairs is not None:
            train_pairs = islice(train_pairs, cfg.max_train_pairs)
        tokenizer = Tokenizer.train(
            sample_texts(train_pairs),
            vocab_size=cfg.vocab_size,
            model_type=cfg.spm_model_type,
            max_sentences=cfg.spm_max_sentences,
            seed=seed,
        )
    train = StreamingTrainData(cfg, tokenizer, seed=seed)
    return PreparedData(
        tokenizer=tokenizer,
        train=train,  # type: ignore[arg-type]
        val=[load_eval_set(cfg, cfg.val_split, tokenizer)],
        test=[load_eval_set(cfg, cfg.test_split, tokenizer)],
        filter_stats=train.filter_stats,
    )
