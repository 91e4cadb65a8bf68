"""A multilingual run's data (``data.pairs`` / ``data.langs``): every direction's splits, one
SentencePiece model over all languages with a tag per target language, and the training pairs of
all directions in one pool, so that batches mix directions.

The tag starts each source (mt/data/languages.py); targets are untagged, so the decoder learns
nothing it could output by mistake, and the searches rule the tags out as well.

Legend: N training pairs of all directions, n_i those of direction i.
"""

import logging
from collections.abc import Iterator
from dataclasses import replace
from itertools import chain

import datasets
import numpy as np

from mt.config import DataConfig
from mt.data.batching import Batch, ParallelData, subset
from mt.data.corpus import (
    FilterStats,
    PreparedData,
    filter_training_pairs,
    load_eval_set,
    load_split,
    tokenize,
    training_data,
)
from mt.data.languages import Direction, directions, epoch_counts, languages, target_languages
from mt.data.tokenizer import Tokenizer, reservoir_sample

log = logging.getLogger(__name__)


def direction_config(cfg: DataConfig, d: Direction) -> DataConfig:
    """``cfg`` for the one direction ``d`` (its files are ``{split}.{d.src}`` / ``.{d.tgt}``)."""
    return replace(cfg, src_lang=d.src, tgt_lang=d.tgt, pairs=None, langs=None)


def train_tokenizer(
    cfg: DataConfig, dirs: list[Direction], trains: list[datasets.Dataset], seed: int
) -> Tokenizer:
    """One SentencePiece model for every language, learnt from an equal share of each
    language's distinct training sentences (a language on the side of several directions counts
    once), with a tag piece per target language."""
    langs = languages(dirs)
    share = max(1, cfg.spm_max_sentences // len(langs))
    per_language = []
    for lang in langs:
        sides = [
            ds[column]
            for d, ds in zip(dirs, trains)
            for column, side in (("src", d.src), ("tgt", d.tgt))
            if side == lang
        ]
        distinct = dict.fromkeys(chain.from_iterable(sides))
        per_language.append(reservoir_sample(distinct, share, seed))
    return Tokenizer.train(
        chain.from_iterable(per_language),
        vocab_size=cfg.vocab_size,
        model_type=cfg.spm_model_type,
        max_sentences=cfg.spm_max_sentences,
        seed=seed,
        target_languages=target_languages(dirs),
    )


def check_tags(tokenizer: Tokenizer, dirs: list[Direction], option: str) -> None:
    """A given tokenizer (resume, ``init_from``, ``data.spm_model``) must tag every target."""
    missing = [t for t in target_languages(dirs) if t not in tokenizer.language_tags]
    if missing:
        known = ", ".join(tokenizer.language_tags) or "none"
        raise ValueError(
            f"{option}: its SentencePiece model has no tag for {', '.join(missing)} (it tags: "
            f"{known}); train a new one (leave data.spm_model out) or use the model's directions"
        )


def prepare_multilingual(
    cfg: DataConfig, *, seed: int = 1, tokenizer: Tokenizer | None = None
) -> PreparedData:
    """Every direction of ``cfg`` loaded, tokenised with its tag, filtered and pooled; the
    held-out splits kept per direction."""
    dirs = directions(cfg)
    per_dir = [direction_config(cfg, d) for d in dirs]
    trains = []
    for c in per_dir:
        ds = load_split(c, c.train_split)
        if cfg.max_train_pairs is not None and cfg.max_train_pairs < len(ds):
            ds = ds.select(range(cfg.max_train_pairs))
        trains.append(ds)
    if tokenizer is None:
        tokenizer = train_tokenizer(cfg, dirs, trains, seed)
    check_tags(tokenizer, dirs, "the run's tokenizer")
    parts, stats = [], []
    for d, ds in zip(dirs, trains):
        tag = tokenizer.language_tags[d.tgt]
        kept, st = filter_training_pairs(
            tokenize(ds, tokenizer, cfg.num_proc, (tag,)),
            max_tokens=cfg.max_tokens,
            max_len_ratio=cfg.max_len_ratio,
        )
        log.info("%s: %d training pairs kept of %d", d, st.kept, len(ds))
        parts.append(kept)
        stats.append(st)
    pool = datasets.concatenate_datasets(parts)
    sizes = [len(p) for p in parts]
    tags = np.array([tokenizer.language_tags[d.tgt] for d in dirs], dtype=np.int64)
    train = training_data(pool, tokenizer, cfg, seed, src_tags=np.repeat(tags, sizes))
    if cfg.pair_temperature != 1.0:
        train = MixedTrainData(train, sizes, temperature=cfg.pair_temperature, seed=seed)
    return PreparedData(
        tokenizer=tokenizer,
        train=train,
        val=[load_eval_set(c, c.val_split, tokenizer, c.tgt_lang) for c in per_dir],
        test=[load_eval_set(c, c.test_split, tokenizer, c.tgt_lang) for c in per_dir],
        filter_stats=FilterStats(*(sum(getattr(s, f) for s in stats) for f in vars(stats[0]))),
    )


class MixedTrainData:
    """The pooled training pairs, each direction's share of an epoch set by the temperature
    (:func:`mt.data.languages.epoch_counts`): direction i gives ``count_i`` pairs an epoch, all
    of them as often as they fit and a random part for the rest, drawn from (seed, epoch), so a
    resumed run sees the same epoch. Serves the trainer's interface of
    :class:`mt.data.batching.ParallelData` (``inner``: that, or sampled subwords)."""

    def __init__(self, inner, sizes: list[int], *, temperature: float, seed: int) -> None:
        self.inner = inner
        self.fixed = getattr(inner, "fixed", inner)  # the deterministic encoding (estimates)
        self.tokenizer = inner.tokenizer
        self.sizes, self.seed = sizes, seed
        self.starts = np.cumsum([0, *sizes[:-1]])
        self.counts = epoch_counts(sizes, temperature)
        log.info(
            "pairs per epoch by direction: %s (temperature %g)",
            ", ".join(f"{c} of {n}" for c, n in zip(self.counts, sizes)),
            temperature,
        )

    def __len__(self) -> int:
        return sum(self.counts)

    def rows(self, epoch: int) -> np.ndarray:
        """The pool's rows of epoch ``epoch`` (N',), direction by direction."""
        rng = np.random.default_rng([self.seed, epoch, 31])
        parts = []
        for start, size, count in zip(self.starts.tolist(), self.sizes, self.counts):
            whole, rest = divmod(count, size)
            parts += [np.arange(start, start + size)] * whole
            parts.append(start + np.sort(rng.choice(size, rest, replace=False)))
        return np.concatenate(parts)

    def windows(self, *, skip: int = 0, epoch: int = 0) -> Iterator[ParallelData]:
        for window in self.inner.windows(skip=skip, epoch=epoch):
            yield subset(window, self.rows(epoch))

    def batches(self, batch_tokens: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """One pass of the first epoch (for callers that want one pass, such as the benchmark)."""
        return subset(self.fixed, self.rows(0)).batches(batch_tokens, rng)

    def close(self) -> None:
        self.inner.close()
