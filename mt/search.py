"""Greedy and beam search over a narrow encode / decode-step protocol.

Legend: B batch (sentences still being decoded), K beam size, V vocabulary, S source length.

Both searches work on a batch at once and drop sentences from the batch as soon as they are
finished, so the remaining steps only compute what is still needed.

The model only has to provide (see :class:`Searchable`): ``encode(src, src_mask)``,
``init_state(memory, src_mask)`` returning a state with ``index_select(index, memory=...)``, and
``decode_step(tokens, state) -> logits``. Tests drive the searches with scripted fake models.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from mt.masks import padding_mask


class Searchable(Protocol):
    max_positions: int

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor: ...

    def init_state(self, memory: Tensor, src_mask: Tensor) -> Any: ...

    def decode_step(self, tokens: Tensor, state: Any) -> Tensor: ...


_NEVER = -1e30  # score of a forced EOS that the model deems impossible


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # length-normalised log-probability (EOS included)


def max_output_lengths(src: Tensor, pad_id: int, a: float, b: int, limit: int) -> Tensor:
    """(B,) most output tokens per sentence, EOS included: ``a * source_length + b``, at most
    ``limit``."""
    src_lens = (src != pad_id).sum(dim=1)
    return (src_lens.float() * a + b).long().clamp(min=1, max=limit)


def _start(model: Searchable, src: Tensor, ids: SpecialIds, repeat: int = 1):
    src_mask = padding_mask(src == ids.pad)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D)
    if repeat > 1:
        memory = memory.repeat_interleave(repeat, dim=0)  # (B*K, S, D)
        src_mask = src_mask.repeat_interleave(repeat, dim=0)
    return model.init_state(memory, src_mask)


@torch.inference_mode()
def greedy_search(
    model: Searchable,
    src: Tensor,
    ids: SpecialIds,
    *,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """The most probable next token at each step. src (B, S) -> B lists of output ids."""
    batch_size, device = src.size(0), src.device
    max_lens = max_output_lengths(src, ids.pad, max_len_a, max_len_b, model.max_positions - 1)
    longest = int(max_lens.max())
    state = _start(model, src, ids)
    out = torch.full((batch_size, longest), ids.pad, dtype=torch.long, device=device)  # (B, L)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) without EOS
    active = torch.arange(batch_size, device=device)  # (b,) original index of each row
    tokens = torch.full((batch_size,), ids.bos, dtype=torch.long, device=device)
    for step in range(1, longest + 1):
        logits = model.decode_step(tokens, state)  # (b, V)
        logits[:, ids.pad] = -torch.inf
        logits[:, ids.bos] = -torch.inf
        tokens = logits.argmax(dim=-1)  # (b,)
        at_limit = max_lens[active] <= step  # the limit counts EOS: EOS is forced here
        done = (tokens == ids.eos) | at_limit
        out[active, step - 1] = tokens
        lengths[active[done]] = step - 1
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            active, tokens = active[keep], tokens[keep]
            state.index_select(keep)
    rows, n = out.tolist(), lengths.tolist()  # one transfer at the end
    return [row[:length] for row, length in zip(rows, n)]


@torch.inference_mode()
def beam_search(
    model: Searchable,
    src: Tensor,
    ids: SpecialIds,
    *,
    beam_size: int,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search; src (B, S) -> for each sentence its ``n_best`` hypotheses, best first.

    Each step scores all K*V extensions of the live beams and keeps the top 2K candidates
    (as fairseq does: at most K of them end in EOS, so K live ones always remain). Candidates
    among the top K that end in EOS are finished, scored as log-probability / length **
    ``length_penalty``. A sentence is done once it has K finished hypotheses (or reaches its
    length limit, where EOS is forced); it then leaves the batch.
    """
    k = beam_size
    batch_size = src.size(0)
    device = src.device
    max_lens = max_output_lengths(src, ids.pad, max_len_a, max_len_b, model.max_positions - 1)
    state = _start(model, src, ids, repeat=k)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    n_finished = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) at most K
    active = torch.arange(batch_size, device=device)  # (b,) original sentence of each group
    prefixes = torch.full((batch_size * k, 1), ids.bos, dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), -torch.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first is live at step 1
    for step in range(1, int(max_lens.max()) + 1):
        b = active.numel()
        log_probs = model.decode_step(prefixes[:, -1], state).float().log_softmax(-1)  # (b*K, V)
        vocab = log_probs.size(-1)
        log_probs[:, ids.pad] = -torch.inf
        log_probs[:, ids.bos] = -torch.inf
        at_limit = (max_lens[active] <= step).repeat_interleave(k)  # (b*K,)
        if bool(at_limit.any()):
            # A finite floor keeps a hypothesis even where the model gives EOS probability 0.
            eos_scores = log_probs[at_limit, ids.eos].clamp(min=_NEVER)
            log_probs[at_limit] = -torch.inf
            log_probs[at_limit, ids.eos] = eos_scores
        candidates = scores[:, :, None] + log_probs.view(b, k, vocab)  # (b, K, V)
        top_scores, top_ids = candidates.view(b, k * vocab).topk(2 * k, dim=1)  # (b, 2K)
        top_beams, top_tokens = top_ids // vocab, top_ids % vocab
        is_eos = top_tokens == ids.eos  # (b, 2K)

        # 1. Finish the EOS candidates that rank among the top K.
        finishing = is_eos[:, :k] & (top_scores[:, :k] > -torch.inf)
        if bool(finishing.any()):
            rows = (torch.arange(b, device=device)[:, None] * k + top_beams[:, :k])[finishing]
            normalised = top_scores[:, :k][finishing] / (step**length_penalty)
            groups = finishing.nonzero()[:, 0]
            sentences = active[groups]
            n_finished.index_add_(0, sentences, torch.ones_like(sentences))
            n_finished.clamp_(max=k)
            for sentence, row, value in zip(sentences.tolist(), rows.tolist(), normalised.tolist()):
                if len(finished[sentence]) < k:
                    tokens = prefixes[row, 1:].tolist()
                    finished[sentence].append(Hypothesis(tokens, value))

        # 2. The best K non-EOS candidates continue (stable: keep the score order).
        rank = is_eos.long() * (2 * k) + torch.arange(2 * k, device=device)  # EOS last
        keep = rank.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # (b, K)
        scores = top_scores.gather(1, keep)
        parent = torch.arange(b, device=device)[:, None] * k + top_beams.gather(1, keep)
        parent = parent.view(-1)  # (b*K,) rows of the previous step
        prefixes = torch.cat([prefixes[parent], top_tokens.gather(1, keep).view(-1, 1)], dim=1)
        state.index_select(parent, memory=False)

        # 3. Drop sentences that are done.
        done = (n_finished[active] >= k) | (max_lens[active] <= step)  # (b,)
        if bool(done.all()):
            break
        if bool(done.any()):
            groups_left = (~done).nonzero().squeeze(1)  # (b',)
            rows_left = (groups_left[:, None] * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[groups_left], scores[groups_left]
            prefixes = prefixes[rows_left]
            state.index_select(rows_left)
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]
