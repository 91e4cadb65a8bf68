"""Strings in, strings out: the one translation path behind training's test pass, evaluate and
translate.

Inputs are sorted by length and cut into token-budget batches (little padding), searched, and
put back in input order. Empty inputs give empty outputs without touching the model.
"""

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from mt.checks import check_decode
from mt.config import DecodeConfig, decode_settings
from mt.data.batching import pad, token_batches
from mt.data.corpus import clean_line
from mt.data.tokenizer import Tokenizer
from mt.decoding.precision import PrecisionModels
from mt.decoding.sampling import Sampler
from mt.decoding.search import SpecialIds, beam_search, greedy_search
from mt.decoding.workers import Job, SearchWorkers, balanced_batch_tokens
from mt.model.transformer import Transformer

log = logging.getLogger(__name__)


@dataclass
class Translation:
    text: str
    score: float | None  # length-normalised log-probability (beam search only)
    truncated: bool = False  # the source was cut to the model's maximum length


class Translator:
    """A model, its tokenizer and the decode settings (:class:`mt.config.DecodeConfig`, taken
    whole: beam size, length penalty, length limits, n-best, batch size, precision).

    Input cleaning, cutting, batching and empty lines are handled here for every engine; an
    engine supplies :meth:`_search` (mt/decoding/ctranslate2.py is the other one)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        settings: DecodeConfig | None = None,
        tgt_lang: str | None = None,
    ) -> None:
        self.model = model
        self.precisions = PrecisionModels(model)  # the model in the precision a search runs in
        self._configure(tokenizer, settings, model.max_positions, tgt_lang)

    def _configure(
        self,
        tokenizer: Tokenizer,
        settings: DecodeConfig | None,
        max_positions: int,
        tgt_lang: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = decode_settings(settings) if settings is not None else DecodeConfig()
        check_decode(self.settings)
        tags = tuple(tokenizer.language_tags.values())  # never output (mt/data/multilingual.py)
        self.ids = SpecialIds(
            pad=tokenizer.pad_id, bos=tokenizer.bos_id, eos=tokenizer.eos_id, never=tags
        )
        self.max_positions = max_positions
        # Source ids + EOS must fit the positional table.
        self.max_src_tokens = max_positions - 1
        self._generator: torch.Generator | None = None  # sampling's, made on first use
        self.workers: SearchWorkers | None = None  # processes searching batches side by side
        self._target(tgt_lang)

    def _target(self, tgt_lang: str | None) -> None:
        """Translate into ``tgt_lang``: a multilingual model's sources start with its tag."""
        tags = self.tokenizer.language_tags
        if tgt_lang is not None and tgt_lang not in tags:
            known = ", ".join(tags) if tags else "one language only (no tags)"
            raise ValueError(f"tgt_lang={tgt_lang}: this model translates into {known}")
        self.tgt_lang = tgt_lang
        self.source_prefix = [tags[tgt_lang]] if tgt_lang is not None else []

    def with_target(self, tgt_lang: str | None) -> "Translator":
        """The same model and settings translating into ``tgt_lang`` (a multilingual model)."""
        other = copy.copy(self)
        other._target(tgt_lang)
        return other

    def with_settings(self, settings: DecodeConfig) -> "Translator":
        """The same model and engine with other decode settings (nothing is loaded again)."""
        other = copy.copy(self)
        other.settings = decode_settings(settings)
        check_decode(other.settings)
        other._generator = None
        return other

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def engine(self) -> str:
        """What searches, for reports: ``mt`` or ``ctranslate2 (QUANTIZATION)``."""
        return "mt"

    @property
    def beam_size(self) -> int:
        return self.settings.beam_size

    def translate(self, lines: list[str]) -> list[str]:
        """One output string per input line."""
        return [nbest[0].text for nbest in self.translate_nbest(lines, n_best=1)]

    def translate_nbest(
        self, lines: list[str], n_best: int | None = None, prefixes: list[str] | None = None
    ) -> list[list[Translation]]:
        """For each line its ``n_best`` translations (default: the settings' ``n_best``), best
        first; greedy when the beam size is 1, drawn when ``sampling`` is on (then ``n_best``
        samples). ``prefixes``: per line, text each translation must begin with (its subwords,
        as the tokenizer splits it alone), or an empty string."""
        n_best = self.settings.n_best if n_best is None else n_best
        if n_best > self.beam_size and not self.settings.sampling:
            raise ValueError(f"n_best={n_best} cannot exceed beam_size={self.beam_size}")
        encoded = self.encode(lines, warn=False)
        cut = {n for n, ids in enumerate(encoded) if len(ids) > self.max_src_tokens}
        encoded = self.cut(encoded)
        forced = self.tokenizer.encode([clean_line(p) for p in prefixes]) if prefixes else None
        results: list[list[Translation]] = [[Translation("", None)] for _ in lines]
        todo = [i for i, ids in enumerate(encoded) if ids]
        with self._inference():
            batches = self._batches(todo, encoded)
            jobs = [
                ([encoded[i] for i in b], [forced[i] for i in b] if forced else None)
                for b in batches
            ]
            for batch, found in zip(batches, self._search_all(jobs, n_best)):
                for i, nbest in zip(batch, found):
                    results[i] = [replace(t, truncated=True) for t in nbest] if i in cut else nbest
        return results

    def _side_by_side(self) -> bool:
        return self.workers is not None and not self.settings.sampling

    def _search_all(self, jobs: list[Job], n_best: int) -> Iterator[list[list[Translation]]]:
        """:meth:`_search` of each batch, in order: here, or side by side in the worker
        processes (``decode.workers``; sampling draws here, from this translator's seed)."""
        if not self._side_by_side():
            return (self._search(sources, n_best, prefix) for sources, prefix in jobs)
        settings = replace(self.settings, precision=self.precision())
        return self.workers.search(settings, jobs, n_best)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """The model in eval mode while translating, as it was afterwards (training's
        validation translates mid-run)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def encode(self, lines: list[str], *, warn: bool = True) -> list[list[int]]:
        """Subword ids of each line as the model sees it: cleaned, behind the target language's
        tag (a multilingual model; an empty line stays empty), and cut to the maximum length
        with a warning each (``warn=False``: left whole, for the caller to cut)."""
        tags = self.tokenizer.language_tags
        if tags and self.tgt_lang is None:
            raise ValueError(
                f"this model translates into {', '.join(tags)}: choose one with tgt_lang=..."
            )
        encoded = self.tokenizer.encode([clean_line(line) for line in lines])
        if self.source_prefix:
            encoded = [self.source_prefix + ids if ids else ids for ids in encoded]
        return self.cut(encoded) if warn else encoded

    def cut(self, encoded: list[list[int]]) -> list[list[int]]:
        """Id lists longer than the model's maximum cut to it, each with a warning."""
        for n, ids in enumerate(encoded):
            if len(ids) > self.max_src_tokens:
                log.warning(
                    "input line %d has %d subword tokens; cut to the model's maximum of %d",
                    n + 1,
                    len(ids),
                    self.max_src_tokens,
                )
                encoded[n] = ids[: self.max_src_tokens]
        return encoded

    def _batches(self, todo: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """Lines ``todo`` grouped by length under ``decode.batch_tokens`` source positions
        (the training batcher's rule, sources only)."""
        lengths = np.fromiter((len(encoded[i]) for i in todo), dtype=np.int64, count=len(todo))
        budget = self.settings.batch_tokens
        if self._side_by_side():
            budget = balanced_batch_tokens(self.settings, int(lengths.sum()))
        groups = token_batches(lengths, None, budget)
        return [[todo[j] for j in group.tolist()] for group in groups]

    def _search(
        self, sources: list[list[int]], n_best: int, prefixes: list[list[int]] | None
    ) -> list[list[Translation]]:
        device = self.device
        src = pad(sources, self.ids.pad, suffix=self.ids.eos).to(device)
        prefix = pad(prefixes, self.ids.pad).to(device) if prefixes else None
        dec = self.settings
        common = dict(max_len_a=dec.max_len_a, max_len_b=dec.max_len_b, prefix=prefix)
        model, context = self.precisions.for_search(self.precision())
        with context:
            if dec.sampling:
                draws = [
                    self.tokenizer.decode(
                        greedy_search(model, src, self.ids, choose=self._sampler(), **common)
                    )
                    for _ in range(n_best)
                ]
                return [[Translation(d[i], None) for d in draws] for i in range(len(sources))]
            if self.beam_size == 1:
                outputs = greedy_search(model, src, self.ids, **common)
                return [[Translation(text, None)] for text in self.tokenizer.decode(outputs)]
            hyps = beam_search(
                model,
                src,
                self.ids,
                beam_size=dec.beam_size,
                length_penalty=dec.length_penalty,
                n_best=n_best,
                **common,
            )
        texts = self.tokenizer.decode([h.tokens for nbest in hyps for h in nbest])
        scores = np.array([h.score for nbest in hyps for h in nbest])
        out, pos = [], 0
        for nbest in hyps:
            out.append(
                [Translation(texts[pos + j], float(scores[pos + j])) for j in range(len(nbest))]
            )
            pos += len(nbest)
        return out

    def precision(self) -> str:
        """The settings' precision, ``auto`` resolved: timed for the device the model is on
        when first asked (mt/decoding/precision.py). A server asks before it listens, so that
        no request waits for the probe."""
        dec = self.settings
        return self.precisions.resolve(
            dec.precision,
            batch_tokens=dec.batch_tokens,
            beam_size=1 if dec.sampling else dec.beam_size,
            ids=self.ids,
        )

    def _sampler(self) -> Sampler:
        """One generator per translator, seeded once: the same lines with the same seed draw
        the same samples, and successive calls go on drawing."""
        if self._generator is None:
            self._generator = torch.Generator(self.device).manual_seed(self.settings.seed)
        dec = self.settings
        return Sampler(
            top_k=dec.top_k, top_p=dec.top_p, temperature=dec.temperature, generator=self._generator
        )
