"""Score given translations (``scripts/score.py``): each pair's log-probability under the model,
with teacher forcing, as training computes it (without label smoothing).

Legend: B pairs in a batch, S source length, T target length (+ EOS), V vocabulary.
"""

from dataclasses import dataclass

import numpy as np
import torch

from mt.data.batching import collate, token_batches
from mt.data.tokenizer import Tokenizer
from mt.model.masks import padding_mask
from mt.model.transformer import Transformer


@dataclass
class PairScore:
    log_prob: float  # sum over the target tokens, EOS included
    tokens: int  # target tokens, EOS included

    @property
    def per_token(self) -> float:
        return self.log_prob / self.tokens


@torch.inference_mode()
def score_pairs(
    model: Transformer,
    tokenizer: Tokenizer,
    sources: list[str],
    targets: list[str],
    *,
    batch_tokens: int = 6000,
    tgt_lang: str | None = None,
) -> tuple[list[PairScore], int]:
    """One score per pair, in order; and how many pairs had a side cut to the model's maximum
    length (source + EOS and BOS + target must fit its positional table). ``tgt_lang``: the
    targets' language, whose tag starts each source (a multilingual model)."""
    limit = model.max_positions - 1
    prefix = [tokenizer.language_tags[tgt_lang]] if tgt_lang is not None else []
    src_ids = [prefix + ids for ids in tokenizer.encode(sources)]
    tgt_ids = tokenizer.encode(targets)
    cut = sum(1 for s, t in zip(src_ids, tgt_ids) if len(s) > limit or len(t) > limit)
    src_ids = [s[:limit] for s in src_ids]
    tgt_ids = [t[:limit] for t in tgt_ids]
    lengths = [
        np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) for ids in (src_ids, tgt_ids)
    ]
    scores: list[PairScore | None] = [None] * len(sources)
    device = next(model.parameters()).device
    model.eval()
    for group in token_batches(*lengths, batch_tokens):
        batch = group.tolist()
        pairs = collate([src_ids[i] for i in batch], [tgt_ids[i] for i in batch], tokenizer)
        src, tgt_in, tgt_out = (
            pairs.src.to(device),
            pairs.tgt_in.to(device),
            pairs.tgt_out.to(device),
        )
        src_mask = padding_mask(src == tokenizer.pad_id)
        logits = model.decode(tgt_in, model.encode(src, src_mask), src_mask)  # (B, T, V)
        gold = logits.float().log_softmax(-1).gather(-1, tgt_out[..., None])[..., 0]  # (B, T)
        real = tgt_out != tokenizer.pad_id
        totals = (gold * real).sum(dim=1).tolist()
        for i, total, n in zip(batch, totals, real.sum(dim=1).tolist()):
            scores[i] = PairScore(total, n)
    return scores, cut
