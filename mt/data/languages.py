"""Directions: which language pairs a run trains, and which target a translation asks for.

One run trains one direction (``data.src_lang`` -> ``data.tgt_lang``), or several at once
(``data.pairs=[de-en,en-de,fr-en]``, or ``data.langs=[de,en,fr]`` for every direction between
them) as one multilingual model. Such a model reads its target language from a tag put before the
source (``<2en> Ein Mann ...``, :func:`mt.data.tokenizer.language_tag`), as in Johnson et al.
2017 ("Google's Multilingual NMT", Section 3); docs/design.md says why the source side.

Across directions, training examples are drawn by corpus size with a temperature (Arivazhagan
et al. 2019, Section 4.2): direction i of n_i pairs gets a share p_i ~ n_i ** (1 / T) of each
epoch; T = 1 is proportional (every pair once), larger T lifts the small directions.
"""

from dataclasses import dataclass

import numpy as np

from mt.config import DataConfig


@dataclass(frozen=True)
class Direction:
    src: str
    tgt: str

    def __str__(self) -> str:
        return f"{self.src}-{self.tgt}"


def parse_direction(text: str, option: str = "data.pairs") -> Direction:
    """``de-en`` -> Direction("de", "en"), or a clear error naming ``option``."""
    src, sep, tgt = str(text).partition("-")
    if not sep or not src or not tgt or "-" in tgt:
        raise ValueError(
            f"{option}: {text!r} is not a direction: write SRC-TGT with two language codes, "
            "e.g. de-en"
        )
    if src == tgt:
        raise ValueError(f"{option}: {text!r} translates a language into itself")
    return Direction(src, tgt)


def is_multilingual(cfg: DataConfig) -> bool:
    """Whether the run trains several directions (tagged) rather than src_lang -> tgt_lang."""
    return bool(cfg.pairs or cfg.langs)


def directions(cfg: DataConfig) -> list[Direction]:
    """The directions a run trains, in the order the config names them."""
    if cfg.pairs and cfg.langs:
        raise ValueError(
            "data.pairs and data.langs are both set: give the directions (pairs) or the "
            "languages to connect all ways (langs), not both"
        )
    if cfg.langs:
        langs = [str(lang) for lang in cfg.langs]
        if len(set(langs)) != len(langs) or len(langs) < 2 or any("-" in x for x in langs):
            raise ValueError(
                f"data.langs={langs}: give at least two distinct language codes, e.g. [de,en,fr]"
            )
        return [Direction(s, t) for s in langs for t in langs if s != t]
    if cfg.pairs:
        found = [parse_direction(p) for p in cfg.pairs]
        repeated = {str(d) for d in found if found.count(d) > 1}
        if repeated:
            raise ValueError(f"data.pairs names {sorted(repeated)} more than once")
        return found
    return [Direction(cfg.src_lang, cfg.tgt_lang)]


def languages(dirs: list[Direction]) -> list[str]:
    """Every language of ``dirs``, each once, in order of first mention."""
    return list(dict.fromkeys(lang for d in dirs for lang in (d.src, d.tgt)))


def target_languages(dirs: list[Direction]) -> list[str]:
    return list(dict.fromkeys(d.tgt for d in dirs))


def choose_target(
    cfg: DataConfig, tgt_lang: str | None, option: str = "tgt_lang", required: bool = True
) -> str | None:
    """The tag a translation with a model trained on ``cfg`` starts from: None for a
    single-direction model (whose ``tgt_lang``, if given, must be its own), else ``tgt_lang``,
    which must be one of the model's targets (it may be left out when there is only one; or,
    unless ``required``, when each request will name it: then None)."""
    targets = target_languages(directions(cfg))
    if not is_multilingual(cfg):
        if tgt_lang is not None and tgt_lang != cfg.tgt_lang:
            raise ValueError(
                f"{option}={tgt_lang}: this model translates {cfg.src_lang} -> {cfg.tgt_lang} "
                f"only; leave {option} out or give {option}={cfg.tgt_lang}"
            )
        return None
    if tgt_lang is None:
        if len(targets) == 1:
            return targets[0]
        if not required:
            return None
        raise ValueError(
            f"this model translates into {', '.join(targets)}: choose one with {option}=..."
        )
    if tgt_lang not in targets:
        raise ValueError(
            f"{option}={tgt_lang}: this model translates into {', '.join(targets)} only"
        )
    return tgt_lang


def direction_shares(sizes: list[int], temperature: float) -> np.ndarray:
    """Each direction's share of an epoch, ~ size ** (1 / temperature), summing to 1
    (``temperature`` > 0: mt/checks.py refuses other values of data.pair_temperature)."""
    weights = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    return weights / weights.sum()


def epoch_counts(sizes: list[int], temperature: float) -> list[int]:
    """Examples each direction contributes to one epoch: the epoch keeps the corpus's total
    size, split by :func:`direction_shares` (at least one example a direction)."""
    raw = direction_shares(sizes, temperature) * sum(sizes)
    counts = np.floor(raw).astype(np.int64)
    # The pairs rounding left over go to the largest remainders (the total stays exact).
    for i in np.argsort(counts - raw)[: sum(sizes) - int(counts.sum())]:
        counts[i] += 1
    return [max(1, int(c)) for c in counts]
