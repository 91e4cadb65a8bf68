"""Regularisation fitted to the budget (``train.short_budget``): how strongly to regularise
depends on how many passes over the training split the budget allows on *this* machine.

Dropout and subword sampling pay off once a model has seen its corpus often enough to overfit
it; a budget that ends after a few passes (a slower CPU, a larger corpus) only learns more
slowly with them. So before the first update the run estimates the passes its budget allows:
exactly from ``train.max_epochs`` and ``train.max_steps``, and for ``train.max_minutes`` from a
few timed updates of real training batches. Fewer than ``short_budget.below_epochs`` passes:
the run trains with ``short_budget.dropout`` and ``short_budget.subword_alpha`` instead of
``model.dropout`` and ``data.subword_alpha``. When the clock is the limit, a short budget also
trains on smaller batches (``short_budget.batch_tokens``): on a CPU the tokens per second hardly
depend on the batch size, so the same minutes buy more, smaller updates, and a model that sees
its corpus only a few times learns more from them. The smaller batches are timed too, and kept
only if the clock stays the nearest limit (a step limit would otherwise cut the run's tokens).
An option given on the command line is kept either way; a resumed run keeps what it started
with. The validation runs that chose the settings: docs/results.md ("The default on every CPU").
"""

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mt.checks import check_data
from mt.config import RunConfig, TrainConfig, run_config_from_dict
from mt.data.batching import ParallelData
from mt.data.corpus import PreparedData
from mt.runtime import forked_rng, sync
from mt.training import setup
from mt.training.distributed import DistContext
from mt.training.optim import build_optimizer, build_scheduler
from mt.training.precision import training_precision, trial_updater

log = logging.getLogger("mt.training.trainer")

PACE_WARMUP_UPDATES = 2  # untimed: kernel selection, first allocations
PACE_TIMED_UPDATES = 6  # their median is the estimate


@dataclass(frozen=True)
class Estimate:
    """What the budget allows at one batch size."""

    epochs: float
    """Passes over the training split the nearest limit allows (math.inf: no limit is known)."""
    pace: float | None = None
    """Seconds per update, timed (only with ``train.max_minutes``)."""
    updates_per_epoch: float = 1.0
    batch_tokens: int | None = None
    """The ``train.batch_tokens`` it was made with."""

    @property
    def updates(self) -> float:
        return self.epochs * self.updates_per_epoch

    def short(self, t: TrainConfig) -> bool:
        """Fewer passes than ``train.short_budget.below_epochs``."""
        return self.epochs < t.short_budget.below_epochs

    def clock_nearest(self, t: TrainConfig) -> bool:
        """Whether ``train.max_minutes`` is the limit that ends the run first."""
        if self.pace is None or t.max_minutes is None:
            return False
        return t.max_minutes * 60 / self.pace / self.updates_per_epoch <= self.epochs * (1 + 1e-9)


@dataclass(frozen=True)
class BudgetFit:
    """The estimate and what it chose (logged, and kept in metrics.json)."""

    epochs: float
    """Passes over the training split the budget allows (math.inf: no limit is known)."""
    short: bool
    dropout: float
    subword_alpha: float
    seconds_per_update: float | None = None
    """From the timed updates (only with ``train.max_minutes``)."""
    updates: float = math.inf
    """Updates the budget allows (``epochs`` x updates per epoch)."""
    minutes: float | None = None
    """``train.max_minutes``, when the clock is the nearest limit."""
    batch_tokens: int | None = None
    """``train.batch_tokens`` the run trains with."""

    def describe(self) -> str:
        if math.isinf(self.epochs):
            return "no limit known: the values as configured"
        within = f" in {self.minutes:g} min" if self.minutes else ""
        pace = f"{self.seconds_per_update:.2f} s each, " if self.seconds_per_update else ""
        kind = "short" if self.short else "long"
        batch = f" train.batch_tokens={self.batch_tokens}" if self.batch_tokens else ""
        return (
            f"about {self.updates:,.0f} updates{within} ({pace}~{self.epochs:.1f} passes over "
            f"the training split): a {kind} budget, model.dropout={self.dropout:g} "
            f"data.subword_alpha={self.subword_alpha:g}{batch}"
        )

    def report(self) -> dict:
        epochs = None if math.isinf(self.epochs) else round(self.epochs, 2)
        pace = self.seconds_per_update
        return {
            "epochs": epochs,
            "short": self.short,
            "dropout": self.dropout,
            "subword_alpha": self.subword_alpha,
            "batch_tokens": self.batch_tokens,
            "seconds_per_update": None if pace is None else round(pace, 4),
            "updates": None if math.isinf(self.updates) else round(self.updates),
        }


def budget_epochs(
    cfg: RunConfig,
    updates_per_epoch: float,
    seconds_per_update: Callable[[], float],
) -> tuple[float, float | None]:
    """The passes the nearest limit allows, and the timed seconds per update (None when the
    clock is not a limit). ``seconds_per_update`` is only called for ``train.max_minutes``."""
    t = cfg.train
    epochs, pace = math.inf, None
    if t.max_epochs is not None:
        epochs = float(t.max_epochs)
    if t.max_steps is not None:
        epochs = min(epochs, t.max_steps / updates_per_epoch)
    if t.max_minutes is not None:
        pace = seconds_per_update()
        epochs = min(epochs, t.max_minutes * 60 / pace / updates_per_epoch)
    return epochs, pace


def wants_smaller_batches(cfg: RunConfig, estimate: Estimate, given: set[str]) -> bool:
    """Whether to time ``short_budget.batch_tokens`` too: a short budget that the clock ends,
    a smaller batch than ``train.batch_tokens``, and no batch size on the command line."""
    t, s = cfg.train, cfg.train.short_budget
    return (
        estimate.short(t)
        and estimate.clock_nearest(t)
        and 0 < s.batch_tokens < t.batch_tokens
        and "train.batch_tokens" not in given
    )


def fit_to_budget(
    cfg: RunConfig,
    estimate: Estimate,
    given: set[str],
    smaller: Estimate | None = None,
) -> tuple[RunConfig, BudgetFit]:
    """``cfg`` with the short budget's dropout and subword sampling when ``estimate.epochs`` is
    under ``train.short_budget.below_epochs``, except for options in ``given`` (the command
    line's); and with the batches of ``smaller`` (the estimate at ``short_budget.batch_tokens``)
    when the budget is short and the clock is still its nearest limit with them."""
    t, short_cfg = cfg.train, cfg.train.short_budget
    short = estimate.short(t)
    dropout, alpha = cfg.model.dropout, cfg.data.subword_alpha
    if short and "model.dropout" not in given:
        dropout = short_cfg.dropout
    if short and "data.subword_alpha" not in given:
        alpha = short_cfg.subword_alpha
    chosen = estimate
    if short and smaller is not None and smaller.clock_nearest(t):
        chosen = smaller
    batch = chosen.batch_tokens or t.batch_tokens
    fitted = replace(
        cfg,
        model=replace(cfg.model, dropout=dropout),
        data=replace(cfg.data, subword_alpha=alpha),
        train=replace(t, batch_tokens=batch),
    )
    minutes = t.max_minutes if chosen.clock_nearest(t) else None
    fit = BudgetFit(
        chosen.epochs, short, dropout, alpha, chosen.pace, chosen.updates, minutes, batch
    )
    return fitted, fit


def seconds_per_update(
    make_update: Callable[[list], object],
    train: ParallelData,
    *,
    batch_tokens: int,
    batches_per_update: int,
    seed: int,
    device: torch.device,
) -> float:
    """The median seconds of :data:`PACE_TIMED_UPDATES` updates (``make_update(batches)``) on
    batches drawn at random from the training split's own batching, after
    :data:`PACE_WARMUP_UPDATES` untimed ones. Drawn from a generator of its own: the run's
    batch order is not touched."""
    rng = np.random.default_rng([seed, 7919])
    groups = train.batch_groups(batch_tokens, rng)
    n = (PACE_WARMUP_UPDATES + PACE_TIMED_UPDATES) * batches_per_update
    picks = rng.choice(len(groups), size=n, replace=len(groups) < n)
    batches = [train.collate(groups[i]).to(device) for i in picks]
    times = []
    for u in range(PACE_WARMUP_UPDATES + PACE_TIMED_UPDATES):
        update = batches[u * batches_per_update : (u + 1) * batches_per_update]
        sync(device)
        begin = time.perf_counter()
        make_update(update)
        sync(device)
        if u >= PACE_WARMUP_UPDATES:
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


@dataclass
class FittedRun:
    """What a fresh or resumed run trains with."""

    cfg: RunConfig
    data: PreparedData
    precision: str
    fit: BudgetFit | None
    """The estimate (None when none was made: off, streamed, or resumed)."""


def fit_run(
    cfg: RunConfig,
    *,
    given: set[str],
    state: dict | None,
    data: PreparedData,
    device: torch.device,
    dist: DistContext,
    run_dir: Path,
) -> FittedRun:
    """Resolve ``train.precision`` and fit the regularisation to the budget, timing a model
    built only for that from a forked random stream (the run's initial weights stay the same).
    Data sampled with another ``data.subword_alpha`` than the fit's is prepared again."""
    with forked_rng(device):
        probe = setup.build_run_model(cfg, data.tokenizer, device)
    precision = training_precision(cfg, probe, data.tokenizer, dist, state)
    fitted, fit = fitted_config(cfg, given, state, data, probe, precision, dist)
    if fitted.data.subword_alpha != cfg.data.subword_alpha:
        data.train.close()
        data = setup.prepare_run_data(fitted, run_dir, dist, data.tokenizer)
    return FittedRun(fitted, data, precision, fit)


def fitted_config(
    cfg: RunConfig,
    given: set[str],
    state: dict | None,
    data: PreparedData,
    probe: torch.nn.Module,
    precision: str,
    dist: DistContext,
) -> tuple[RunConfig, BudgetFit | None]:
    """A resumed run keeps the values it was started with (unless given again); a fine-tuning
    run keeps its checkpoint's dropout. Rank 0 estimates for all ranks."""
    if state:
        started = run_config_from_dict(state["config"])
        return replace(
            cfg,
            model=replace(cfg.model, dropout=_kept(cfg, started, given, "model.dropout")),
            data=replace(cfg.data, subword_alpha=_kept(cfg, started, given, "data.subword_alpha")),
            train=replace(cfg.train, batch_tokens=_kept(cfg, started, given, "train.batch_tokens")),
        ), None
    if not cfg.train.short_budget.below_epochs or cfg.data.streaming:
        return cfg, None
    if cfg.train.init_from:
        given = given | {"model.dropout"}
    estimates = (None, None)
    if dist.is_main:
        estimate = estimate_budget(cfg, data.train, probe, precision, dist.world_size)
        smaller = None
        if wants_smaller_batches(cfg, estimate, given):
            small_cfg = replace(
                cfg, train=replace(cfg.train, batch_tokens=cfg.train.short_budget.batch_tokens)
            )
            smaller = estimate_budget(small_cfg, data.train, probe, precision, dist.world_size)
        estimates = (estimate, smaller)
    estimate, smaller = dist.gather(estimates)[0]
    fitted, fit = fit_to_budget(cfg, estimate, given, smaller)
    check_data(fitted.data)
    log.info("train.short_budget: %s", fit.describe())
    return fitted, fit


def _kept(cfg: RunConfig, started: RunConfig, given: set[str], option: str) -> float | int:
    group, name = option.split(".")
    source = cfg if option in given else started
    return getattr(getattr(source, group), name)


def estimate_budget(
    cfg: RunConfig, train: ParallelData, model: torch.nn.Module, precision: str, world_size: int
) -> Estimate:
    """:func:`budget_epochs` for this run at its ``train.batch_tokens``: its batches per epoch
    (of the deterministic segmentation), and updates timed on a copy of ``model`` with its own
    optimizer."""
    fixed = getattr(train, "fixed", train)  # sampled subwords: the deterministic encoding
    t = cfg.train
    n_batches = len(fixed.batch_groups(t.batch_tokens, np.random.default_rng(cfg.seed)))
    updates_per_epoch = max(1.0, n_batches / (world_size * t.accum_steps))

    def pace() -> float:
        device = next(model.parameters()).device
        with forked_rng(device):
            trial = copy.deepcopy(model).train()
            optimizer = build_optimizer(trial, t)
            updater = trial_updater(
                cfg,
                trial,
                optimizer,
                build_scheduler(optimizer, t),
                precision,
                fixed.tokenizer.pad_id,
            )
            return seconds_per_update(
                lambda batches: updater.update(batches, sum(b.n_tgt_tokens for b in batches)),
                fixed,
                batch_tokens=t.batch_tokens,
                batches_per_update=t.accum_steps,
                seed=cfg.seed,
                device=device,
            )

    epochs, seconds = budget_epochs(cfg, updates_per_epoch, pace)
    return Estimate(epochs, seconds, updates_per_epoch, t.batch_tokens)
