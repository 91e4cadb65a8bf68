"""The state of a training run between steps: where it is (saved in every checkpoint), the loss
and speed since the last log line, and the stop requests it honours (signals, divergence)."""

import logging
import math
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import torch

from mt.training.distributed import DistContext

log = logging.getLogger("mt.training.trainer")


class Stop(Enum):
    """Why the training loop ended (the loop goes on while there is none)."""

    LIMIT = "a limit of the budget (steps, epochs, minutes)"
    PATIENCE = "train.patience: no better validation score"
    SIGNAL = "SIGINT / SIGTERM (after saving)"


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM: the current step finished and ``last.pt`` was saved."""


class TrainingDiverged(ValueError):
    """Too many non-finite updates in a row; the last good checkpoint is kept."""


@dataclass
class Progress:
    """Where training is; saved in every checkpoint and restored on resume."""

    step: int = 0  # optimizer updates (non-finite ones, skipped on the device, included)
    epoch: int = 0  # completed epochs
    window_in_epoch: int = 0  # windows completed in the current epoch (data.streaming)
    batch_in_epoch: int = 0  # batches consumed in the current epoch's (or window's) order
    best_score: float = -math.inf
    best_step: int = 0
    train_seconds: float = 0.0  # wall clock of the loop, validation included
    validation_seconds: float = 0.0
    tgt_tokens: int = 0
    nonfinite_updates: int = 0  # skipped updates, in total
    history: list[dict] = field(default_factory=list)
    budget_fit: dict | None = None
    """What ``train.short_budget`` estimated and chose when the run started (BudgetFit.report)."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Names the run in its checkpoints, so that tools combining checkpoints can tell runs apart."""


@dataclass
class Meter:
    """Training loss and speed since the last log line."""

    nll: torch.Tensor  # summed on the device: read back only when logging
    tokens: int = 0  # target tokens of all ranks
    local_tokens: int = 0  # this rank's
    start: float = field(default_factory=time.monotonic)

    def reset(self, now: float) -> None:
        self.nll.zero_()
        self.tokens, self.local_tokens, self.start = 0, 0, now


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does: for work that cannot stop between
    steps (the test pass), so that both end it with a message instead of silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event instead of killing the process mid-step."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, _frame):
        log.warning(
            "%s received: finishing the current step, then saving", signal.Signals(signum).name
        )
        requested.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def patience_exhausted(patience: int, p: Progress, dist: DistContext) -> bool:
    """Whether the last ``train.patience`` validations all failed to beat the best score.

    Called by every rank at the same points; rank 0 keeps the validation history during the
    run, so its verdict is shared and all ranks stop together."""
    if not patience:
        return False
    stale = sum(1 for h in p.history if h["step"] > p.best_step)
    if not dist.max([float(stale >= patience)])[0]:
        return False
    log.info(
        "no better validation score in the last %d validations (best %.2f at step %d): "
        "training stops early (train.patience=%d)",
        stale,
        p.best_score,
        p.best_step,
        patience,
    )
    return True
