"""Batching: token ids -> length-bucketed batches under a token budget -> padded tensors.

The batches of an epoch depend only on the lengths and a seeded generator, so a resumed run
sees the same batches in the same order (mt/trainer.py).

Legend: B batch, S source length, T target length, L padded length.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import datasets
import numpy as np
import torch
from torch import Tensor

from mt.tokenizer import Tokenizer


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + EOS, padded
    tgt_in: Tensor  # (B, T) BOS + target ids, padded
    tgt_out: Tensor  # (B, T) target ids + EOS, padded
    n_tgt_tokens: int  # real (non-pad) target tokens, EOS included

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.src.to(device, non_blocking=True),
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.n_tgt_tokens,
        )


def token_batches(
    src_lens: np.ndarray,
    tgt_lens: np.ndarray,
    batch_tokens: int,
    *,
    rng: np.random.Generator | None = None,
    max_padding: float = 0.05,
) -> list[np.ndarray]:
    """Group example indices into batches of similar lengths under a token budget.

    Lengths include the EOS/BOS each side gets. A batch grows while ``n_sentences * longest
    side`` stays within ``batch_tokens`` (OpenNMT-py's "tokens" batch type). To keep padding
    small on *both* sides, examples are sorted by target length and, within one target length,
    by source length in alternating directions (up for even target lengths, down for odd ones),
    so that neighbours across a target-length boundary have similar source lengths too; and a
    batch that is at least half full closes early when one more sentence would make more than
    ``max_padding`` of its positions padding. A random tie-break (``rng``) varies the batches
    from epoch to epoch; with ``rng`` the batch order is shuffled too.
    """
    n = len(src_lens)
    src_lens, tgt_lens = np.asarray(src_lens) + 1, np.asarray(tgt_lens) + 1
    tie = rng.permutation(n) if rng is not None else np.arange(n)
    snake = np.where(tgt_lens % 2 == 0, src_lens, -src_lens)
    order = np.lexsort((tie, snake, tgt_lens))  # last key is the primary one
    batches, start = [], 0
    width_src = width_tgt = real = 0
    for i, j in enumerate(order.tolist()):
        s, t = int(src_lens[j]), int(tgt_lens[j])
        ws, wt, r = max(width_src, s), max(width_tgt, t), real + s + t
        size = i - start + 1
        padded = size * max(ws, wt)
        if i > start and (
            padded > batch_tokens
            or (2 * padded > batch_tokens and r < (1 - max_padding) * size * (ws + wt))
        ):
            batches.append(order[start:i])
            start, ws, wt, r = i, s, t, s + t
        width_src, width_tgt, real = ws, wt, r
    if n:
        batches.append(order[start:])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def pad(
    sequences: list[list[int]],
    pad_id: int,
    *,
    prefix: int | None = None,
    suffix: int | None = None,
) -> Tensor:
    """Id lists -> (B, L) tensor padded with ``pad_id``, each row optionally framed by a
    ``prefix`` (BOS) and a ``suffix`` (EOS) token. Vectorised: one scatter, no per-row tensors."""
    n = len(sequences)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)  # (B,)
    start = int(prefix is not None)
    width = int(lengths.max(initial=0)) + start + int(suffix is not None)
    out = np.full((n, max(width, 1)), pad_id, dtype=np.int64)  # (B, L)
    flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(n), lengths)
    row_starts = np.cumsum(lengths) - lengths
    cols = np.arange(flat.size) - np.repeat(row_starts, lengths) + start
    out[rows, cols] = flat
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(n), lengths + start] = suffix
    return torch.from_numpy(out)


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]], tokenizer: Tokenizer) -> Batch:
    eos, bos, pad_id = tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id
    return Batch(
        src=pad(src_ids, pad_id, suffix=eos),
        tgt_in=pad(tgt_ids, pad_id, prefix=bos),
        tgt_out=pad(tgt_ids, pad_id, suffix=eos),
        n_tgt_tokens=sum(map(len, tgt_ids)) + len(tgt_ids),
    )


class ParallelData:
    """Token ids of one split in memory, served as length-bucketed batches."""

    def __init__(
        self, src_ids: list[list[int]], tgt_ids: list[list[int]], tokenizer: Tokenizer
    ) -> None:
        self.src_ids, self.tgt_ids, self.tokenizer = src_ids, tgt_ids, tokenizer
        self.src_lens = np.array([len(s) for s in src_ids])
        self.tgt_lens = np.array([len(t) for t in tgt_ids])

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, tokenizer: Tokenizer) -> "ParallelData":
        return cls(ds["src_ids"], ds["tgt_ids"], tokenizer)

    def __len__(self) -> int:
        return len(self.src_ids)

    def windows(self, *, skip: int = 0, epoch: int = 0) -> Iterator["ParallelData"]:
        """An epoch as windows (see mt/streaming.py): in memory, the whole split is one, the
        same in every epoch (mt/subword_sampling.py varies it by ``epoch``)."""
        if skip == 0:
            yield self

    def close(self) -> None:
        """Nothing to release (the streamed and sampled training data hold workers)."""

    def batches(
        self, batch_tokens: int, rng: np.random.Generator | None = None, *, skip: int = 0
    ) -> Iterator[Batch]:
        """One pass over the data; batches are collated as they are consumed. ``skip`` passes
        over the first batches without collating them (resuming in the middle of an epoch)."""
        for group in self.batch_groups(batch_tokens, rng)[skip:]:
            yield self.collate(group)

    def batch_groups(
        self, batch_tokens: int, rng: np.random.Generator | None = None
    ) -> list[np.ndarray]:
        """The example indices of each batch of one pass (see :func:`token_batches`)."""
        return token_batches(self.src_lens, self.tgt_lens, batch_tokens, rng=rng)

    def collate(self, group: np.ndarray) -> Batch:
        return collate(
            [self.src_ids[i] for i in group], [self.tgt_ids[i] for i in group], self.tokenizer
        )

    def n_tgt_tokens(self, group: np.ndarray) -> int:
        """Real target tokens (EOS included) of a batch, known without collating it."""
        return int(self.tgt_lens[group].sum()) + len(group)
