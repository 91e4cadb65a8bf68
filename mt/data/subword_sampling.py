"""Subword regularisation: a new segmentation of the training split every epoch.

A sentence has many segmentations into the vocabulary's pieces (``▁wooden`` or ``▁wood en`` or
``▁w o o d en``); deterministic encoding always shows the model the same one. Sampling a
segmentation per epoch (Kudo 2018, "Subword Regularization"; for BPE models, Provilkov et al.
2020, "BPE-Dropout") is data augmentation for free: the model sees each sentence in varied
pieces, which makes it less prone to memorise a small corpus and more robust to segmentation.

SentencePiece does the sampling: for a unigram model it draws a segmentation with probability
proportional to ``P(segmentation)^alpha`` (``nbest=-1``: over all segmentations; ``nbest=k``:
over the k best), so a smaller alpha means flatter sampling and more, shorter pieces
(docs/results.md gives the token counts on one corpus); for a BPE model alpha is the
probability of dropping each merge.

Only training is sampled: validation, test and translation encode deterministically, as the
model will be used. Within one process an epoch's segmentation depends only on (seed, epoch) --
for a streamed corpus (mt/data/streaming.py), on (seed, epoch, window). SentencePiece's sampler
also draws on state of its own that differs between processes, so a run resumed in a new
process trains on other samples from the resume point on: the same distribution, not the same
bits (the trainer says so when it resumes). The next epoch (or window) is encoded in a
background thread while the current one trains (SentencePiece releases the GIL while it
encodes).

Legend: N training pairs.
"""

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import sentencepiece as spm

from mt.data.batching import Batch, ParallelData
from mt.data.tokenizer import Tokenizer

_SEED_LOCK = threading.Lock()


def sample_encode(
    tokenizer: Tokenizer, texts: list[str], *, alpha: float, nbest: int, seed: int
) -> list[list[int]]:
    """One sampled segmentation of each text, reproducible from ``seed``.

    SentencePiece seeds its sampler from one process-wide seed: set right before a
    single-threaded call, it fixes the draw. The lock keeps two sampling calls (say, the
    background thread's and the main thread's) from setting the seed between each other's.
    """
    with _SEED_LOCK:
        spm.set_random_generator_seed(seed)
        return tokenizer.sp.encode(
            texts,
            out_type=int,
            enable_sampling=True,
            alpha=alpha,
            nbest_size=nbest,
            num_threads=1,
        )


def resample(
    fixed: ParallelData,
    sources: list[str],
    targets: list[str],
    *,
    alpha: float,
    nbest: int,
    seed: list[int],
    max_tokens: int,
    src_tags: np.ndarray | None = None,
) -> ParallelData:
    """A sampled segmentation of the pairs whose deterministic encoding is ``fixed``.

    ``seed`` (e.g. [run seed, epoch] or [run seed, epoch, window]) fixes the draw. A pair whose
    sampled encoding would exceed ``max_tokens`` on either side (the limit the pairs were
    filtered with) keeps its deterministic encoding on that side. ``src_tags``: per pair, the
    language tag id its source starts with (a multilingual run), kept in front of the sample.
    """
    # Distinct seeds for the two sides; SentencePiece takes 32 bits.
    src_seed, tgt_seed = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
    src = sample_encode(fixed.tokenizer, sources, alpha=alpha, nbest=nbest, seed=src_seed)
    tgt = sample_encode(fixed.tokenizer, targets, alpha=alpha, nbest=nbest, seed=tgt_seed)
    if src_tags is not None:
        src = [[tag, *ids] for tag, ids in zip(src_tags.tolist(), src)]
    src = [s if len(s) <= max_tokens else f for s, f in zip(src, fixed.src_ids)]
    tgt = [t if len(t) <= max_tokens else f for t, f in zip(tgt, fixed.tgt_ids)]
    return ParallelData(src, tgt, fixed.tokenizer)


class SampledTrainData:
    """The training split in memory, segmented anew for every epoch.

    Serves the trainer's interface of :class:`mt.data.batching.ParallelData` (an epoch is one
    window). A sampled segmentation is usually a few pieces longer than the deterministic one;
    where it would exceed ``max_tokens`` (the limit the pairs were filtered with), the pair keeps
    its deterministic encoding, so sampling never brings back a pair the filter dropped.
    """

    def __init__(
        self,
        fixed: ParallelData,
        sources: list[str],
        targets: list[str],
        *,
        alpha: float,
        nbest: int,
        seed: int,
        max_tokens: int,
        src_tags: np.ndarray | None = None,
    ) -> None:
        if not len(fixed) == len(sources) == len(targets):
            raise ValueError(
                f"{len(fixed)} encoded pairs but {len(sources)} sources / {len(targets)} targets"
            )
        self.fixed = fixed  # the deterministic encoding (lengths filtered, fallback)
        self.sources, self.targets = sources, targets
        self.tokenizer = fixed.tokenizer
        self.alpha, self.nbest, self.seed, self.max_tokens = alpha, nbest, seed, max_tokens
        self.src_tags = src_tags  # (N,) tag id per pair, or None (see :func:`resample`)
        self._ahead: ThreadPoolExecutor | None = None
        self._upcoming: tuple[int, Future] | None = None

    def __len__(self) -> int:
        return len(self.fixed)

    @property
    def src_ids(self) -> list[list[int]]:
        return self.fixed.src_ids

    @property
    def tgt_ids(self) -> list[list[int]]:
        return self.fixed.tgt_ids

    def epoch_data(self, epoch: int) -> ParallelData:
        """Epoch ``epoch``'s segmentation of every pair (computed now, or taken from the
        background thread that prepared it during the previous epoch)."""
        if self._upcoming is not None and self._upcoming[0] == epoch:
            data = self._upcoming[1].result()
        else:
            data = self._encode(epoch)
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-subwords")
        self._upcoming = (epoch + 1, self._ahead.submit(self._encode, epoch + 1))
        return data

    def _encode(self, epoch: int) -> ParallelData:
        return resample(
            self.fixed,
            self.sources,
            self.targets,
            alpha=self.alpha,
            nbest=self.nbest,
            seed=[self.seed, epoch],
            max_tokens=self.max_tokens,
            src_tags=self.src_tags,
        )

    def windows(self, *, skip: int = 0, epoch: int = 0) -> Iterator[ParallelData]:
        """An epoch as one window, in that epoch's segmentation."""
        if skip == 0:
            yield self.epoch_data(epoch)

    def batches(self, batch_tokens: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """Batches of the first epoch's segmentation (for callers that want one pass, such as
        the benchmark: nothing is prepared ahead)."""
        return self._encode(0).batches(batch_tokens, rng)

    def close(self) -> None:
        """Stop the background encoding (an epoch being encoded is finished first)."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)
            self._ahead, self._upcoming = None, None
