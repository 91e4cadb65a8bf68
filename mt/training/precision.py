"""``train.precision``: the arithmetic of training's forward and backward passes.

``auto`` times a few real training steps of this model (forward, loss, backward, optimizer
step) on a full batch in each candidate, once at start-up, and takes the fastest, fp32 winning
ties (mt/runtime.py, ``choose_by_timing``). Weights, optimizer state and the loss stay fp32
either way (bf16 is autocast). A resumed run keeps the precision it was started with, so that
it continues bit-identically.
"""

import copy
import logging

import torch
from torch import nn

from mt.config import RunConfig
from mt.data.batching import Batch
from mt.data.tokenizer import Tokenizer
from mt.kernels import loss_functions
from mt.runtime import PrecisionChoice, auto_candidates, choose_by_timing, forked_rng
from mt.training.distributed import DistContext
from mt.training.optim import build_optimizer, build_scheduler
from mt.training.updates import Updater

log = logging.getLogger("mt.training.trainer")

PROBE_LENGTH = 24  # subwords per probe sentence, each side (EOS / BOS added)


def training_precision(
    cfg: RunConfig, model: nn.Module, tokenizer: Tokenizer, dist: DistContext, state: dict | None
) -> str:
    """``train.precision`` resolved: as given; for ``auto`` the precision recorded in the
    checkpoint being resumed, else :func:`choose_training_precision`'s choice (logged). Rank 0
    decides for all: ranks must agree, and timings differ."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if state and state.get("precision"):
        log.info("train.precision=auto: %s, as when this run started", state["precision"])
        return state["precision"]
    choice = None
    if dist.is_main:
        device = next(model.parameters()).device
        choice = choose_training_precision(cfg, model, tokenizer, device)
        log.info("train.precision=auto: %s", choice.describe())
    return dist.gather(choice and choice.precision)[0]


def choose_training_precision(
    cfg: RunConfig, model: nn.Module, tokenizer: Tokenizer, device: torch.device
) -> PrecisionChoice:
    """Time a few updates of a copy of ``model`` (its own optimizer) on a batch of
    ``train.batch_tokens`` in each of :func:`~mt.runtime.auto_candidates`. The random streams
    (dropout) are put back afterwards: the run's updates are the same as without the probe."""
    with forked_rng(device):
        batch = probe_batch(cfg.train.batch_tokens, tokenizer, model.max_positions, device)
        trial = copy.deepcopy(model).train()
        optimizer = build_optimizer(trial, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train)
        probes = {}
        for precision in auto_candidates(device):
            updater = trial_updater(cfg, trial, optimizer, scheduler, precision, tokenizer.pad_id)
            probes[precision] = lambda u=updater: u.update([batch], batch.n_tgt_tokens)
        return choose_by_timing(probes, device)


def trial_updater(
    cfg: RunConfig,
    trial: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: str,
    pad_id: int,
) -> Updater:
    """Updates of a copy of the run's model, in one process, for timing them."""
    return Updater(
        model=trial,
        train_model=trial,
        optimizer=optimizer,
        scheduler=scheduler,
        loss=loss_functions(cfg.model.kernels),
        cfg=cfg.train,
        precision=precision,
        device=next(trial.parameters()).device,
        dist=DistContext(),
        pad_id=pad_id,
    )


def probe_batch(
    batch_tokens: int, tokenizer: Tokenizer, max_positions: int, device: torch.device
) -> Batch:
    """A full batch of sentences of :data:`PROBE_LENGTH` ordinary subwords (their values do not
    change the time), as many as ``batch_tokens`` holds on the target side."""
    length = min(PROBE_LENGTH, max_positions - 1)
    rows = max(1, batch_tokens // (length + 1))
    token = max(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) + 1
    words = torch.full((rows, length), token)
    eos = torch.full((rows, 1), tokenizer.eos_id)
    bos = torch.full((rows, 1), tokenizer.bos_id)
    src = torch.cat([words, eos], dim=1)  # (B, L + 1)
    tgt_in = torch.cat([bos, words], dim=1)  # (B, L + 1)
    return Batch(src, tgt_in, src.clone(), rows * (length + 1)).to(device)
