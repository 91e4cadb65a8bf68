"""Greedy and beam search over a narrow encode / decode-step protocol.

Legend: B batch (sentences still being decoded), K beam size, V vocabulary, S source length.

Both searches work on a batch at once and drop sentences from the batch as soon as they are
finished, so the remaining steps only compute what is still needed.

The model only has to provide (see :class:`Searchable`): ``encode(src, src_mask)``,
``init_state(memory, src_mask, group)`` (``group`` rows per sentence: beam search's K beams)
returning a state with ``index_select(index, memory=...)``, and
``decode_step(tokens, state) -> logits``. Tests drive the searches with scripted fake models.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from mt.model.masks import padding_mask


class Searchable(Protocol):
    max_positions: int

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor: ...

    def init_state(self, memory: Tensor, src_mask: Tensor, group: int) -> Any: ...

    def decode_step(self, tokens: Tensor, state: Any) -> Tensor: ...


_NEVER = -1e30  # score of a forced EOS that the model deems impossible


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int
    never: tuple[int, ...] = ()  # other ids no output may hold (a multilingual model's tags)


def ban_specials(logits: Tensor, ids: SpecialIds) -> None:
    """In place: PAD, BOS and ``ids.never`` can never be output: they leave the distribution
    before it is normalised, so scores are log-probabilities over the tokens a translation can
    hold."""
    logits[:, ids.pad] = -torch.inf
    logits[:, ids.bos] = -torch.inf
    if ids.never:
        logits[:, list(ids.never)] = -torch.inf


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # length-normalised log-probability (EOS included)


def max_output_lengths(src: Tensor, pad_id: int, a: float, b: int, limit: int) -> Tensor:
    """(B,) most output tokens per sentence, EOS included: ``a * source_length + b``, at most
    ``limit``."""
    src_lens = (src != pad_id).sum(dim=1)
    return (src_lens.float() * a + b).long().clamp(min=1, max=limit)


def room_for_prefix(max_lens: Tensor, prefix: Tensor | None, pad: int, limit: int) -> Tensor:
    """Length limits that leave room for each forced prefix and its EOS."""
    if prefix is None:
        return max_lens
    return torch.maximum(max_lens, (prefix != pad).sum(dim=1) + 1).clamp(max=limit)


def forced_tokens(prefix: Tensor | None, rows: Tensor, step: int, pad: int) -> Tensor | None:
    """The prefix token each of ``rows`` (original sentence indices) must take at ``step``
    (1-based), pad where its prefix is over; None when no row has one left."""
    if prefix is None or step > prefix.size(1):
        return None
    return prefix[rows, step - 1]


def force_prefix(log_probs: Tensor, forced: Tensor, pad: int) -> None:
    """In place: rows (b*K,) with a forced token (not pad) may only take it, whatever the model
    thinks of it (a finite floor keeps the hypothesis alive); its log-probability is its score.
    """
    rows = (forced != pad)[:, None]  # (b*K, 1)
    token = forced[:, None]
    own = log_probs.gather(1, token)  # (b*K, 1), before masking
    log_probs.masked_fill_(rows, -torch.inf)  # forced rows only: the others are untouched
    log_probs.scatter_(1, token, torch.where(rows, own.clamp(min=_NEVER), own))


def check_interval(device: torch.device, check_every: int | None) -> int:
    """Steps between looks at which sentences are done (to drop them from the batch).

    A look reads a flag on the host. On a CPU that is free, so every step looks and no step
    computes a finished sentence. On an accelerator it waits for the device to finish the
    queued work, so the step loop only looks every 8 steps: finished rows ride along for at
    most 7 steps (their outputs are already recorded) and the device never idles in between.
    """
    if check_every is not None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        return check_every
    return 1 if device.type == "cpu" else 8


def start_state(model: Searchable, src: Tensor, ids: SpecialIds, group: int = 1):
    """Encode ``src`` (B, S) and the decoder state for it, with ``group`` rows per sentence
    (beam search's K beams), next to each other, sharing the sentence's memory."""
    src_mask = padding_mask(src == ids.pad)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D), or one per model of an ensemble
    return model.init_state(memory, src_mask, group)


@torch.inference_mode()
def greedy_search(
    model: Searchable,
    src: Tensor,
    ids: SpecialIds,
    *,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    check_every: int | None = None,
    choose: Callable[[Tensor], Tensor] | None = None,
    prefix: Tensor | None = None,
) -> list[list[int]]:
    """The most probable next token at each step (or the one ``choose`` draws from the logits:
    mt/decoding/sampling.py). src (B, S) -> B lists of output ids. ``prefix`` (B, P), padded:
    tokens each output must begin with (:func:`forced_tokens`).

    Each step records, on the device, which rows end (EOS or their length limit) and their
    lengths; every ``check_every`` steps (see :func:`check_interval`) rows that ended leave the
    batch.
    """
    batch_size, device = src.size(0), src.device
    every = check_interval(device, check_every)
    max_lens = max_output_lengths(src, ids.pad, max_len_a, max_len_b, model.max_positions - 1)
    max_lens = room_for_prefix(max_lens, prefix, ids.pad, model.max_positions - 1)
    longest = int(max_lens.max())
    state = start_state(model, src, ids)
    out = torch.full((batch_size, longest), ids.pad, dtype=torch.long, device=device)  # (B, L)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) without EOS
    active = torch.arange(batch_size, device=device)  # (b,) original index of each row
    ended = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (b,)
    tokens = torch.full((batch_size,), ids.bos, dtype=torch.long, device=device)
    for step in range(1, longest + 1):
        logits = model.decode_step(tokens, state)  # (b, V), the model's dtype
        ban_specials(logits, ids)
        # max's indices are argmax's (the first maximum, ties included, in any dtype: widening
        # changes no value), in a vectorised CPU kernel argmax lacks. Draws are in float32.
        tokens = choose(logits.float()) if choose is not None else logits.max(dim=-1).indices
        if (forced := forced_tokens(prefix, active, step, ids.pad)) is not None:
            tokens = torch.where(forced != ids.pad, forced, tokens)
        at_limit = max_lens[active] <= step  # the limit counts EOS: EOS is forced here
        ending = ((tokens == ids.eos) | at_limit) & ~ended
        out[active, step - 1] = tokens  # past a row's end: ignored (cut at its length)
        lengths[active] = torch.where(ending, step - 1, lengths[active])
        ended |= ending
        if step % every and step < longest:
            continue
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            active, tokens, ended = active[keep], tokens[keep], ended[keep]
            state.index_select(keep)
    rows, n = out.tolist(), lengths.tolist()  # one transfer at the end
    return [row[:length] for row, length in zip(rows, n)]


@dataclass
class Beams:
    """What beam search carries between steps, for b sentences still being decoded.

    Finished hypotheses live in device tensors with K slots per sentence plus one spare slot
    that absorbs finishers beyond the K-th; they are read on the host once, at the end. Outputs
    never contain pad, so a finished hypothesis is its slot's tokens up to the first pad.
    """

    k: int
    active: Tensor  # (b,) original sentence of each group of K rows
    prefixes: Tensor  # (b*K, t) BOS and the tokens so far
    scores: Tensor  # (b, K) summed log-probabilities of the live beams
    fin_scores: Tensor  # (B, K+1) length-normalised scores of finished hypotheses
    fin_tokens: Tensor  # (B, K+1, L)
    n_finished: Tensor  # (B,) at most K

    @classmethod
    def start(cls, batch_size: int, k: int, longest: int, ids: SpecialIds, device) -> "Beams":
        scores = torch.full((batch_size, k), -torch.inf, device=device)
        scores[:, 0] = 0.0  # all beams start identical: only the first is live at step 1
        return cls(
            k=k,
            active=torch.arange(batch_size, device=device),
            prefixes=torch.full((batch_size * k, 1), ids.bos, dtype=torch.long, device=device),
            scores=scores,
            fin_scores=torch.full((batch_size, k + 1), -torch.inf, device=device),
            fin_tokens=torch.full(
                (batch_size, k + 1, longest), ids.pad, dtype=torch.long, device=device
            ),
            n_finished=torch.zeros(batch_size, dtype=torch.long, device=device),
        )


def force_eos_at_limit(log_probs: Tensor, at_limit: Tensor, eos: int) -> None:
    """In place: rows at their length limit (b*K,) may only end. A finite floor keeps a
    hypothesis even where the model gives EOS probability 0."""
    eos_scores = log_probs[:, eos]  # (b*K,)
    eos_scores = torch.where(at_limit, eos_scores.clamp(min=_NEVER), eos_scores)
    log_probs.masked_fill_(at_limit[:, None], -torch.inf)
    log_probs[:, eos] = eos_scores


def top_candidates(beams: Beams, log_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The 2K best extensions of each sentence's live beams (at most K of them end in EOS, so
    K live ones always remain): scores, beam and token of each, (b, 2K). ``log_probs`` (b*K, V)
    becomes the candidates' scores in place (no second (b*K, V) tensor)."""
    b, k, vocab = beams.active.numel(), beams.k, log_probs.size(-1)
    candidates = log_probs.view(b, k, vocab).add_(beams.scores[:, :, None])  # (b, K, V), in place
    top_scores, top_ids = candidates.view(b, k * vocab).topk(2 * k, dim=1)  # (b, 2K)
    return top_scores, top_ids // vocab, top_ids % vocab


def finish(
    beams: Beams, step: int, top: tuple[Tensor, Tensor, Tensor], eos: int, length_penalty: float
) -> None:
    """EOS candidates among the top K finish, scored log-probability / length **
    ``length_penalty``: each takes its sentence's next free slot in rank order (beyond the
    K-th, the spare slot)."""
    top_scores, top_beams, top_tokens = (t[:, : beams.k] for t in top)  # (b, K)
    b, k, active = beams.active.numel(), beams.k, beams.active
    finishing = (top_tokens == eos) & (top_scores > -torch.inf)  # (b, K)
    slot = beams.n_finished[active, None] + finishing.long().cumsum(dim=1) - 1  # (b, K)
    slot = torch.where(finishing & (slot < k), slot, k)
    sentence = active[:, None].expand(b, k)
    rows = torch.arange(b, device=active.device)[:, None] * k + top_beams  # (b, K)
    beams.fin_scores[sentence, slot] = top_scores / (step**length_penalty)
    beams.fin_tokens[sentence, slot, : step - 1] = beams.prefixes[rows, 1:]
    beams.n_finished[active] = (beams.n_finished[active] + finishing.sum(dim=1)).clamp(max=k)


def advance(beams: Beams, top: tuple[Tensor, Tensor, Tensor], eos: int) -> Tensor:
    """The best K non-EOS candidates continue (in score order). Returns the (b*K,) rows of the
    previous step they extend, for reordering the decoder state."""
    top_scores, top_beams, top_tokens = top  # (b, 2K)
    b, k = beams.active.numel(), beams.k
    device = top_scores.device
    rank = (top_tokens == eos).long() * (2 * k) + torch.arange(2 * k, device=device)  # EOS last
    keep = rank.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # (b, K)
    beams.scores = top_scores.gather(1, keep)
    parent = torch.arange(b, device=device)[:, None] * k + top_beams.gather(1, keep)
    parent = parent.view(-1)  # (b*K,)
    new_tokens = top_tokens.gather(1, keep).view(-1, 1)  # (b*K, 1)
    beams.prefixes = torch.cat([beams.prefixes[parent], new_tokens], dim=1)
    return parent


def drop_done(beams: Beams, done: Tensor, state: Any) -> None:
    """Remove the sentences flagged in ``done`` (b,) from the beams and the decoder state."""
    k = beams.k
    groups_left = (~done).nonzero().squeeze(1)  # (b',)
    rows_left = (groups_left[:, None] * k + torch.arange(k, device=done.device)).view(-1)
    beams.active, beams.scores = beams.active[groups_left], beams.scores[groups_left]
    beams.prefixes = beams.prefixes[rows_left]
    state.index_select(rows_left)


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
    check_every: int | None = None,
    prefix: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Beam search; src (B, S) -> for each sentence its ``n_best`` hypotheses, best first.

    Each step scores all K*V extensions of the live beams and keeps the top 2K candidates
    (as fairseq does); those among the top K that end in EOS finish (:func:`finish`), the best K
    others continue (:func:`advance`). A sentence is done once it has K finished hypotheses (or
    reaches its length limit, where EOS is forced); every ``check_every`` steps (see
    :func:`check_interval`) sentences that are done leave the batch (:func:`drop_done`).
    Where host reads are free (``check_every`` 1), steps skip the work nobody needs.
    """
    k, device = beam_size, src.device
    every = check_interval(device, check_every)
    max_lens = max_output_lengths(src, ids.pad, max_len_a, max_len_b, model.max_positions - 1)
    max_lens = room_for_prefix(max_lens, prefix, ids.pad, model.max_positions - 1)
    longest = int(max_lens.max())
    state = start_state(model, src, ids, group=k)
    beams = Beams.start(src.size(0), k, longest, ids, device)
    for step in range(1, longest + 1):
        logits = model.decode_step(beams.prefixes[:, -1], state)  # (b*K, V), the model's dtype
        ban_specials(logits, ids)
        log_probs = torch.log_softmax(logits, -1, dtype=torch.float32)  # widened in the same pass
        if (forced := forced_tokens(prefix, beams.active, step, ids.pad)) is not None:
            force_prefix(log_probs, forced.repeat_interleave(k), ids.pad)
        at_limit = (max_lens[beams.active] <= step).repeat_interleave(k)  # (b*K,)
        if every > 1 or bool(at_limit.any()):
            force_eos_at_limit(log_probs, at_limit, ids.eos)
        top = top_candidates(beams, log_probs)
        if every > 1 or bool((top[2][:, :k] == ids.eos).any()):
            finish(beams, step, top, ids.eos, length_penalty)
        state.index_select(advance(beams, top, ids.eos), memory=False)
        if step % every and step < longest:
            continue
        done = (beams.n_finished[beams.active] >= k) | (max_lens[beams.active] <= step)  # (b,)
        if bool(done.all()):
            break
        if bool(done.any()):
            drop_done(beams, done, state)
    return _collect(beams.fin_scores[:, :k], beams.fin_tokens[:, :k], ids.pad, n_best)


def _collect(scores: Tensor, tokens: Tensor, pad_id: int, n_best: int) -> list[list[Hypothesis]]:
    """(B, K) finished slots on the device -> per sentence its n_best hypotheses, best first."""
    out = []
    for row_scores, row_tokens in zip(scores.tolist(), tokens.tolist()):
        hyps = [
            Hypothesis(toks[: toks.index(pad_id)] if pad_id in toks else toks, score)
            for score, toks in zip(row_scores, row_tokens)
            if score > -torch.inf
        ]
        out.append(sorted(hyps, key=lambda h: -h.score)[:n_best])
    return out
