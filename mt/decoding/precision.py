"""The arithmetic a translator searches in (``decode.precision``).

- ``fp32``: the model as it is.
- ``bf16``: a copy of the model with every weight in bf16, made once (and again after the
  weights change, as they do between training's validations), so no step converts a weight;
  autocast would convert each weight at every call. With ``model.kernels=auto`` on a CPU its
  linear layers' weights are also packed once for oneDNN (mt/kernels/packed.py). Attention
  scores and softmax stay float32 (mt/model/attention.py, mt/kernels/attention.py), and so do
  the search's log-probabilities and length penalties (mt/decoding/search.py casts each
  step's logits).
- ``fp16``: autocast over the fp32 model: a model held in fp16 could overflow its residual
  stream (bf16 has fp32's range, fp16 does not).
- ``auto``: the faster of the candidates on a few decode steps of this very model at the
  translator's batch size and beam (:func:`decode_probe`), timed once per search kind; fp32
  wins ties (mt/runtime.py, ``choose_by_timing``).
"""

import copy
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from mt.decoding.search import SpecialIds, start_state
from mt.kernels import kernels_of
from mt.kernels.packed import can_pack, pack_linears
from mt.runtime import PrecisionChoice, auto_candidates, autocast, choose_by_timing

log = logging.getLogger(__name__)

PROBE_SOURCE_LENGTH = 24  # subwords per probe sentence: a typical sentence, EOS included
PROBE_STEPS = 4  # decode steps per probe run, after the encoder


def held_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` for inference with its parameters and buffers in ``dtype``."""
    duplicate = copy.deepcopy(model).to(dtype).eval()
    for p in duplicate.parameters():
        p.requires_grad_(False)
        p.grad = None
    return duplicate


def weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter is changed in place (an optimizer step, a load)."""
    return tuple(p._version for p in model.parameters())


class PrecisionModels:
    """The model in each precision a search asks for, and ``auto``'s choices.

    Shared by a translator and its :meth:`~mt.decoding.translator.Translator.with_settings`
    copies, so a bf16 copy or a timed choice is made once for all of them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._copies: dict[torch.dtype, tuple[tuple[int, ...], torch.device, nn.Module]] = {}
        self.choices: dict[tuple, PrecisionChoice] = {}

    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def for_search(self, precision: str) -> tuple[nn.Module, AbstractContextManager]:
        """The module to search with and the context to search in, for a resolved precision."""
        if precision == "bf16":
            return self._copy(torch.bfloat16), nullcontext()
        return self.model, autocast(self.device(), precision)

    def _copy(self, dtype: torch.dtype) -> nn.Module:
        key, device = weights_version(self.model), self.device()
        held = self._copies.get(dtype)
        if held is None or held[0] != key or held[1] != device:
            duplicate = held_in(self.model, dtype)
            if kernels_of(self.model) == "auto" and can_pack(device, dtype):
                pack_linears(duplicate)
            held = (key, device, duplicate)
            self._copies[dtype] = held
        return held[2]

    def _key(self, batch_tokens: int, beam_size: int) -> tuple:
        return (batch_tokens, beam_size, self.device())

    def choice(self, *, batch_tokens: int, beam_size: int) -> PrecisionChoice | None:
        """What ``auto`` chose for this batch size and beam, if it was asked."""
        return self.choices.get(self._key(batch_tokens, beam_size))

    def resolve(self, precision: str, *, batch_tokens: int, beam_size: int, ids: SpecialIds) -> str:
        """``precision``, or for ``auto`` the timed choice for this batch size and beam (made
        on first use, logged)."""
        if precision != "auto":
            return precision
        key = self._key(batch_tokens, beam_size)
        if key not in self.choices:
            device = self.device()
            probes = {
                p: decode_probe(*self.for_search(p), ids, batch_tokens, beam_size, device)
                for p in auto_candidates(device)
            }
            self.choices[key] = choose_by_timing(probes, device)
            if self.choices[key].precision != "bf16":
                self._copies.pop(torch.bfloat16, None)  # not used: free its memory
            search = "greedy" if beam_size == 1 else f"beam {beam_size}"
            log.info("decode precision=auto, %s: %s", search, self.choices[key].describe())
        return self.choices[key].precision


def decode_probe(
    model: nn.Module,
    context: AbstractContextManager,
    ids: SpecialIds,
    batch_tokens: int,
    beam_size: int,
    device: torch.device,
) -> Callable[[], None]:
    """A function that runs what a search runs on a full batch: encode sentences of
    :data:`PROBE_SOURCE_LENGTH` subwords (as many as ``batch_tokens`` holds), its beams sharing
    the memory, then :data:`PROBE_STEPS` decode steps over every row, each followed by a
    float32 argmax and a reordering of the caches as beam search does."""
    length = min(PROBE_SOURCE_LENGTH, model.max_positions - 1)
    sentences = max(1, batch_tokens // length)
    token = max(ids.pad, ids.bos, ids.eos) + 1  # an ordinary subword; its value does not matter
    src = torch.full((sentences, length), token, device=device)  # (B, S)
    rows = torch.arange(sentences * beam_size, device=device)

    @torch.inference_mode()
    def probe() -> None:
        with context:
            state = start_state(model, src, ids, group=beam_size)
            tokens = torch.full((len(rows),), ids.bos, device=device)
            for _ in range(PROBE_STEPS):
                tokens = model.decode_step(tokens, state).float().max(-1).indices
                if beam_size > 1:
                    state.index_select(rows, memory=False)

    return probe
