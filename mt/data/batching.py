"""Batching: token ids -> length-bucketed batches under a token budget -> padded tensors.

The batches of an epoch depend only on the lengths and a seeded generator, so a resumed run
sees the same batches in the same order (mt/training/trainer.py).

Legend: B batch, S source length, T target length, L padded length.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from mt.data.tokenizer import Tokenizer


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
    tgt_lens: np.ndarray | None,
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
    from epoch to epoch; with ``rng`` the batch order is shuffled too. ``tgt_lens=None``
    batches sources alone (decoding: the budget counts source positions only).
    """
    n = len(src_lens)
    src_lens = np.asarray(src_lens) + 1
    tgt_lens = np.zeros(n, dtype=np.int64) if tgt_lens is None else np.asarray(tgt_lens) + 1
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
    sequences: Sequence[list[int]],
    pad_id: int,
    *,
    prefix: int | None = None,
    suffix: int | None = None,
) -> Tensor:
    """Id lists -> (B, L) tensor padded with ``pad_id``, each row optionally framed by a
    ``prefix`` (BOS) and a ``suffix`` (EOS) token. Vectorised: one scatter, no per-row tensors."""
    flat, lengths = flatten(sequences)  # (sum of lengths,), (B,)
    return pad_flat(flat, lengths, pad_id, prefix=prefix, suffix=suffix)


def pad_flat(
    flat: np.ndarray,
    lengths: np.ndarray,
    pad_id: int,
    *,
    prefix: int | None = None,
    suffix: int | None = None,
) -> Tensor:
    """:func:`pad` of sequences given as their concatenation ``flat`` and their ``lengths``."""
    n = len(lengths)
    start = int(prefix is not None)
    width = int(lengths.max(initial=0)) + start + int(suffix is not None)
    out = np.full((n, max(width, 1)), pad_id, dtype=np.int64)  # (B, L)
    rows = np.repeat(np.arange(n), lengths)
    row_starts = np.cumsum(lengths) - lengths
    cols = np.arange(flat.size) - np.repeat(row_starts, lengths) + start
    out[rows, cols] = flat
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(n), lengths + start] = suffix
    return torch.from_numpy(out)


def collate(
    src_ids: Sequence[list[int]], tgt_ids: Sequence[list[int]], tokenizer: Tokenizer
) -> Batch:
    """A batch of id lists (:func:`collate_flat` of their concatenations)."""
    return collate_flat(*flatten(src_ids), *flatten(tgt_ids), tokenizer)


def flatten(sequences: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists -> their concatenation and their lengths (the packed form of :class:`TokenIds`)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def collate_flat(
    src_flat: np.ndarray,
    src_lens: np.ndarray,
    tgt_flat: np.ndarray,
    tgt_lens: np.ndarray,
    tokenizer: Tokenizer,
) -> Batch:
    """The one place a training batch is built: the source with EOS, the target shifted right
    behind BOS as the decoder's input and followed by EOS as its output (teacher forcing)."""
    eos, bos, pad_id = tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id
    return Batch(
        src=pad_flat(src_flat, src_lens, pad_id, suffix=eos),
        tgt_in=pad_flat(tgt_flat, tgt_lens, pad_id, prefix=bos),
        tgt_out=pad_flat(tgt_flat, tgt_lens, pad_id, suffix=eos),
        n_tgt_tokens=int(tgt_lens.sum()) + len(tgt_lens),
    )


class TokenIds(Sequence):
    """Id sequences packed into one flat array and offsets: a list of id lists in behaviour
    (``ids[i]`` is a list, iteration, ``==`` with lists), 4 bytes a token in memory.

    Why: a ``datasets`` column indexed row by row formats each row through Arrow (a visible
    share of a CPU step, most of a GPU one; benchmarks/README.md), and Python lists cost ~36
    bytes a token (gigabytes for a few million pairs). Batches gather rows from here with
    one vectorised take.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = values  # (total tokens,) int32
        self.offsets = offsets  # (n + 1,) int64, row i is values[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray) -> "TokenIds":
        """From a list-of-integers Arrow column (as ``datasets`` stores token ids)."""
        chunks = [c for c in column.chunks if len(c)]
        if not chunks:
            return cls(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        values = np.concatenate([c.flatten().to_numpy() for c in chunks]).astype(np.int32)
        lengths = np.concatenate(
            [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]
        ).astype(np.int64)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n,)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The concatenated ids of ``rows`` and their lengths, in that order."""
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        # Position k of the output reads values[starts[row of k] + (k - that row's start)].
        out_starts = np.cumsum(lengths) - lengths
        index = np.arange(int(lengths.sum())) + np.repeat(starts - out_starts, lengths)
        return self.values[index].astype(np.int64), lengths

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return self.values[self.offsets[i] : self.offsets[i + 1]].tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenIds):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(
                self.values, other.values
            )
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking, like a list


def collate_packed(src: TokenIds, tgt: TokenIds, group: np.ndarray, tokenizer: Tokenizer) -> Batch:
    """:func:`collate` of the examples ``group`` of packed ids, without per-sentence lists."""
    return collate_flat(*src.take(group), *tgt.take(group), tokenizer)


def lengths_of(ids: Sequence[list[int]] | TokenIds) -> np.ndarray:
    if isinstance(ids, TokenIds):
        return ids.lengths()
    return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))


def subset(data: "ParallelData", rows: np.ndarray) -> "ParallelData":
    """The pairs ``rows`` of ``data`` (in that order, repeats allowed) as data of their own."""
    if isinstance(data.src_ids, TokenIds) and isinstance(data.tgt_ids, TokenIds):
        sides = []
        for ids in (data.src_ids, data.tgt_ids):
            flat, lengths = ids.take(rows)
            sides.append(TokenIds(flat.astype(np.int32), np.concatenate([[0], np.cumsum(lengths)])))
        return ParallelData(*sides, data.tokenizer)
    rows = rows.tolist()
    return ParallelData(
        [data.src_ids[i] for i in rows], [data.tgt_ids[i] for i in rows], data.tokenizer
    )


class ParallelData:
    """Token ids of one split in memory, served as length-bucketed batches."""

    def __init__(
        self,
        src_ids: Sequence[list[int]] | TokenIds,
        tgt_ids: Sequence[list[int]] | TokenIds,
        tokenizer: Tokenizer,
    ) -> None:
        self.src_ids, self.tgt_ids, self.tokenizer = src_ids, tgt_ids, tokenizer
        self.src_lens = lengths_of(src_ids)
        self.tgt_lens = lengths_of(tgt_ids)

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, tokenizer: Tokenizer) -> "ParallelData":
        """The ids of a tokenised split, packed (:class:`TokenIds`)."""
        columns = ds.with_format("arrow")  # respects a filter's indices mapping
        return cls(
            TokenIds.from_arrow(columns["src_ids"]),
            TokenIds.from_arrow(columns["tgt_ids"]),
            tokenizer,
        )

    def __len__(self) -> int:
        return len(self.src_ids)

    def windows(self, *, skip: int = 0, epoch: int = 0) -> Iterator["ParallelData"]:
        """An epoch as windows (see mt/data/streaming.py): in memory, the whole split is one, the
        same in every epoch (mt/data/subword_sampling.py varies it by ``epoch``)."""
        if skip == 0:
            yield self

    def close(self) -> None:
        """Nothing to release (the streamed and sampled training data hold workers)."""

    def batches(self, batch_tokens: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """One pass over the data; batches are collated as they are consumed."""
        for group in self.batch_groups(batch_tokens, rng):
            yield self.collate(group)

    def batch_groups(
        self, batch_tokens: int, rng: np.random.Generator | None = None
    ) -> list[np.ndarray]:
        """The example indices of each batch of one pass (see :func:`token_batches`)."""
        return token_batches(self.src_lens, self.tgt_lens, batch_tokens, rng=rng)

    def collate(self, group: np.ndarray) -> Batch:
        if isinstance(self.src_ids, TokenIds) and isinstance(self.tgt_ids, TokenIds):
            return collate_packed(self.src_ids, self.tgt_ids, group, self.tokenizer)
        return collate(
            [self.src_ids[i] for i in group], [self.tgt_ids[i] for i in group], self.tokenizer
        )

    def n_tgt_tokens(self, group: np.ndarray) -> int:
        """Real target tokens (EOS included) of a batch, known without collating it."""
        return int(self.tgt_lens[group].sum()) + len(group)
