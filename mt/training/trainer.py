"""The training loop: setup -> fit (updates, periodic validation, checkpoints) -> test.

Resuming is exact on CPU: a checkpoint holds the model, optimizer and schedule, the RNG state,
the position in the epoch's batch order (which depends only on the seed and the epoch number)
and the best-score bookkeeping, so a run that is killed and resumed, any number of times, ends
with the same weights as one that never stopped -- unless the schedule follows the wall clock
(``max_minutes`` with a decay) or subwords are sampled (mt/data/subword_sampling.py).

One update consumes ``world_size x accum_steps`` batches of the epoch's order
(:func:`mt.training.distributed.update_slices`): each rank forwards its own micro-batches. Under
torchrun only rank 0 logs, validates and writes files.
"""

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from mt import files
from mt.checkpoint import model_payload
from mt.config import RunConfig
from mt.data.batching import Batch, ParallelData
from mt.kernels import loss_functions
from mt.loggers import MetricLogger
from mt.model.transformer import count_parameters
from mt.runtime import set_seed
from mt.training import budget_fit, distributed, report, setup
from mt.training.budget import Budget
from mt.training.checkpointing import (
    CheckpointFiles,
    RunLock,
    restore_training_state,
    rng_state,
    training_payload,
)
from mt.training.optim import build_optimizer, build_scheduler
from mt.training.progress import (
    Meter,
    Progress,
    Stop,
    TrainingInterrupted,
    patience_exhausted,
    sigterm_as_interrupt,
    stop_on_signals,
)
from mt.training.progress_display import ProgressDisplay
from mt.training.shared_cores import SharedCoresWatch, cpu_threads
from mt.training.updates import Updater
from mt.training.validation import Validator

log = logging.getLogger(__name__)


class Trainer:
    """One training run in ``run_dir``; the config is read, never changed."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        logger: MetricLogger | None = None,
        given: frozenset[str] = frozenset(),
    ) -> None:
        """``given``: the options set on the command line (``model.dropout``, ...), which
        ``train.short_budget`` leaves as they are."""
        self.cfg = cfg
        self.device, self.dist = setup.choose_device(cfg)
        # Every rank works in rank 0's run directory (Hydra's timestamped default may differ).
        self.run_dir = Path(self.dist.gather(str(run_dir))[0])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir) if self.dist.is_main else None
        try:
            self.build(cfg, logger, set(given))
        except BaseException:  # a bad option or file: the directory is free for the next try
            if self.lock is not None:
                self.lock.release()
            raise

    def build(self, cfg: RunConfig, logger: MetricLogger | None, given: set[str]) -> None:
        keep = max(cfg.train.keep_last, cfg.train.average_last)
        self.files = CheckpointFiles(self.run_dir, keep_last=keep)
        set_seed(cfg.seed)  # the same initial weights on every rank
        self.start = start = setup.starting_point(cfg, self.run_dir)
        self.data = setup.prepare_run_data(cfg, self.run_dir, self.dist, start.tokenizer)
        # The precision, and the regularisation for the budget (mt/training/budget_fit.py).
        fitted = budget_fit.fit_run(
            cfg,
            given=given,
            state=start.state,
            data=self.data,
            device=self.device,
            dist=self.dist,
            run_dir=self.run_dir,
        )
        self.cfg = cfg = fitted.cfg
        self.data, self.precision, self.budget_fit = fitted.data, fitted.precision, fitted.fit
        self.tokenizer = self.data.tokenizer
        self.model = setup.build_run_model(cfg, self.tokenizer, self.device)
        setup.start_weights(self.model, start)
        self.validator = Validator(self.model, self.tokenizer, self.data, cfg, self.device)
        self.progress = Progress()
        self.budget = Budget(cfg.train)
        self.stopped_early = False  # by train.patience
        self.warned_validation_share = False  # warned once a run, by rank 0, not as it ends
        self.shared_cores = SharedCoresWatch(threads=cpu_threads(self.device, self.dist))
        self.attention_plots = cfg.train.val_attention_plot  # off if matplotlib is missing
        self.updater = self.build_updater(start.state, source=str(start.source))
        if self.budget_fit is not None:  # a fresh run (a resumed one restored its own)
            self.progress.budget_fit = self.budget_fit.report()
        if self.dist.rank:
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)  # own dropout masks
        self.logger = logger or setup.run_logger(self.run_dir, self.dist, self.progress.step)
        if not start.state and not cfg.data.streaming:
            self.log_filter_stats()
        pairs = "streamed" if cfg.data.streaming else len(self.data.train)
        log.info(
            f"model: {cfg.model.name}, {count_parameters(self.model) / 1e6:.1f}M parameters, "
            f"vocabulary {self.tokenizer.vocab_size}, device {self.device}, "
            f"{self.updater.precision}; {pairs} training pairs"
        )

    def build_updater(self, state: dict | None, *, source: str) -> Updater:
        """Optimizer, schedule (following the budget) and precision; restored from ``state``
        when resuming, which also restores :attr:`progress`."""
        cfg = self.cfg
        optimizer = build_optimizer(self.model, cfg.train)
        scheduler = build_scheduler(
            optimizer, cfg.train, lambda steps: self.budget.spent(steps, self.progress)
        )
        updater = Updater(
            model=self.model,
            train_model=setup.wrap_for_training(self.model, cfg, self.dist, self.device),
            optimizer=optimizer,
            scheduler=scheduler,
            loss=loss_functions(cfg.model.kernels),
            cfg=cfg.train,
            precision=self.precision,
            device=self.device,
            dist=self.dist,
            pad_id=self.tokenizer.pad_id,
        )
        if state:
            self.progress = restore_training_state(
                state,
                model=self.model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=updater.scaler,
                dist=self.dist,
                device=self.device,
                source=source,
                sampled_subwords=cfg.data.subword_alpha > 0,
            )
            updater.nonfinite_total.fill_(self.progress.nonfinite_updates)
        return updater

    def log_filter_stats(self) -> None:
        """Kept / dropped training pairs (for a streamed corpus: of the epoch just read)."""
        self.logger.log_dict(report.filter_metrics(self.data.filter_stats), self.progress.step)

    # -- updates ---------------------------------------------------------------------------------

    def train_update(self, batches: list[Batch], global_tgt_tokens: int) -> torch.Tensor:
        """One update (mt/training/updates.py); counts it. Returns this rank's summed NLL."""
        nll = self.updater.update(batches, global_tgt_tokens)
        self.progress.step += 1
        self.progress.tgt_tokens += global_tgt_tokens
        return nll

    def check_nonfinite(self) -> None:
        """Read the skipped-update counters; TrainingDiverged after too many in a row."""
        p = self.progress
        p.nonfinite_updates = self.updater.read_nonfinite(
            known=p.nonfinite_updates, step=p.step, last_good=str(self.files.last)
        )

    # -- validation ------------------------------------------------------------------------------

    def validate_and_save(self) -> None:
        """Rank 0 validates (the others wait in ``save``); then every rank takes part in
        saving."""
        if not self.dist.is_main:
            self.save()
            return
        self.after_validation(self.validator.validate())

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Log, keep ``best.pt`` (highest val BLEU, or lowest loss without BLEU), save last."""
        p = self.progress
        self.logger.log_dict(metrics, p.step)
        if self.attention_plots and self.data.val[0].sources:
            self.attention_plots = self.validator.log_attention(self.logger, p.step)
        p.history.append({"step": p.step, **metrics})
        self.display.validated(metrics, p.step)
        current = Validator.selection_score(metrics)
        improved = current > p.best_score
        if improved:
            p.best_score, p.best_step = current, p.step
        self.save(best=improved)

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, *, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``, and a numbered copy with ``train.keep_last``).

        Called on every rank at the same step: each contributes its RNG state, rank 0 writes.
        """
        self.check_nonfinite()
        rng_states = self.dist.gather(rng_state(self.device))
        if self.dist.is_main:
            u = self.updater
            payload = training_payload(
                model_payload(self.model, self.cfg, self.tokenizer),
                optimizer=u.optimizer,
                scheduler=u.scheduler,
                scaler=u.scaler,
                precision=u.precision,
                progress=self.progress,
                rng_states=rng_states,
            )
            self.files.save(payload, step=self.progress.step, best=best)

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train until a limit is reached, then translate the test split with the best model.

        Raises TrainingInterrupted after saving when SIGINT/SIGTERM arrives. The run directory's
        lock is released at the end, however the run ends.
        """
        try:
            return self.fit_and_test()
        finally:
            if self.lock is not None:
                self.lock.release()

    def fit_and_test(self) -> dict:
        with stop_on_signals() as interrupted:
            stopped = self.train_loop(interrupted)
        if stopped is Stop.SIGNAL:
            raise TrainingInterrupted(
                f"training stopped at step {self.progress.step} and saved "
                f"{self.files.last}; continue it with: python scripts/train.py "
                f"<same options> train.resume=auto hydra.run.dir={self.run_dir}"
            )
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 alone translates the test split; end together
            return {}
        try:
            with sigterm_as_interrupt():
                metrics = self.finish()
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"the test pass was interrupted; training ended at step {self.progress.step} "
                f"and is saved. Finish the test pass with: python scripts/train.py "
                f"<same options> train.resume=auto hydra.run.dir={self.run_dir}"
            ) from None
        self.dist.barrier()
        return metrics

    def train_loop(self, interrupted: threading.Event) -> Stop:
        """Update until a limit, the patience or a signal (after saving) ends training."""
        t, p = self.cfg.train, self.progress
        self.interrupted = interrupted
        self.budget.start(p)
        self.budget.clock_spent = self.dist.max([self.budget.clock_fraction()])[0]
        self.stopped_early = patience_exhausted(t.patience, p, self.dist)
        if p.step and (self.stopped_early or self.budget.limit_reached(p)):
            return Stop.LIMIT  # resumed after training had ended (e.g. a crash in the test pass)
        self.display = ProgressDisplay(
            self.budget,
            enabled=t.progress_bar and self.dist.is_main,
            every_steps=t.progress_every_steps,
            initial=p,
        )
        self.meter = Meter(torch.zeros((), device=self.device))
        self.validated_at = p.history[-1]["step"] if p.history else -1
        if p.step == 0 and self.start.init is not None and self.dist.is_main:
            # Fine-tuning: the score it starts from, for the curves (not a checkpoint).
            self.logger.log_dict(self.validator.validate(), 0)
        try:
            ended = self.train_epochs()
        finally:
            self.display.close()
            self.data.train.close()  # background workers (streaming, subword sampling)
        if ended is not None:
            return ended
        if self.validated_at != p.step:  # the epoch limit ended training between validations
            p.train_seconds = self.budget.seconds()
            self.validate_and_save()
        return Stop.LIMIT

    def train_epochs(self) -> Stop | None:
        """Epochs until the epoch limit (None) or until another reason to stop."""
        t, p = self.cfg.train, self.progress
        while t.max_epochs is None or p.epoch < t.max_epochs:
            for window in self.data.train.windows(skip=p.window_in_epoch, epoch=p.epoch):
                # The batch order (and, with data.subword_alpha, the segmentation) depends
                # on (seed, epoch, window) only: resumable.
                rng = np.random.default_rng([self.cfg.seed, p.epoch, p.window_in_epoch])
                ended = self.train_window(window, window.batch_groups(t.batch_tokens, rng))
                if ended is not None:
                    return ended
                p.window_in_epoch += 1
                p.batch_in_epoch = 0
            if self.cfg.data.streaming:
                self.log_filter_stats()
            p.epoch += 1
            p.window_in_epoch = 0
        return None

    def train_window(self, data: ParallelData, groups: list[np.ndarray]) -> Stop | None:
        """The updates over one window's batches (the whole epoch, unless streaming). Returns
        None to go on, else why training stops."""
        t, p, world = self.cfg.train, self.progress, self.dist.world_size
        if not self.cfg.data.streaming:
            self.budget.batches_per_epoch = len(groups)  # one window is the whole epoch
        for update in distributed.update_slices(
            len(groups), world_size=world, accum_steps=t.accum_steps
        ):
            if update.start < p.batch_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            mine = [data.collate(groups[i]) for i in update[self.dist.rank :: world]]
            global_tokens = sum(data.n_tgt_tokens(groups[i]) for i in update)
            self.meter.nll += self.train_update(mine, global_tokens)
            p.batch_in_epoch = update.stop
            self.meter.tokens += global_tokens
            self.meter.local_tokens += sum(b.n_tgt_tokens for b in mine)
            self.display.update(p)
            ended = self.after_update()
            if ended is not None:
                return ended
        return None

    def after_update(self) -> Stop | None:
        """Log, validate or save as due. Every rank takes the same decisions: a limit or a
        signal on one stops all, and the clock of the slowest rank sets the learning rate of
        all. Returns None to go on, else why training stops."""
        t, p, m = self.cfg.train, self.progress, self.meter
        self.shared_cores.check()  # reads the threads' waits every MIN_WINDOW_SECONDS
        if p.step % t.log_every_steps == 0:
            self.check_nonfinite()
            now = time.monotonic()
            nll, tokens = self.dist.sum([float(m.nll), m.local_tokens])
            self.log_training(nll / tokens, m.tokens / (now - m.start))
            m.reset(now)
        limit, stop, self.budget.clock_spent = self.dist.max(
            [self.budget.limit_reached(p), self.interrupted.is_set(), self.budget.clock_fraction()]
        )
        limit, stop = bool(limit), bool(stop)
        p.train_seconds = self.budget.seconds()
        if p.step % t.val_every_steps == 0 or limit:
            pause = time.monotonic()
            self.validate_and_save()
            self.validated_at = p.step
            paused = time.monotonic() - pause
            m.start += paused  # speeds exclude validation
            p.validation_seconds += paused
            p.train_seconds = self.budget.seconds()  # validation included, as in the budget
            if self.dist.is_main and not (limit or self.warned_validation_share):
                self.warned_validation_share = report.warn_validation_share(p, t.val_every_steps)
            if patience_exhausted(t.patience, p, self.dist):
                self.stopped_early = True
                return Stop.PATIENCE
        elif p.step % t.save_every_steps == 0 or stop:
            self.save()
        if stop:
            return Stop.SIGNAL
        return Stop.LIMIT if limit else None

    def log_training(self, loss: float, speed: float) -> None:
        p, lr = self.progress, self.updater.scheduler.get_last_lr()[0]
        self.logger.log_dict(report.training_metrics(loss, speed, lr, p), p.step)
        self.display.trained(loss, speed)

    # -- the end ----------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Translate the test split with the best checkpoint (or the average of the last ones,
        when ``train.average_last`` is set and it scores higher on validation); write
        metrics.json. With ``train.test_at_end=false`` the test split is left alone."""
        metrics = report.run_summary(
            self.progress,
            self.data.filter_stats,
            stopped_early=self.stopped_early,
            parameters=count_parameters(self.model),
            device=self.device,
        )
        if self.cfg.train.test_at_end:
            metrics.update(report.final_test(self.files, self.model, self.validator, self.progress))
            self.logger.log_dict(report.test_metrics(metrics["test"]), self.progress.step)
        (self.run_dir / files.METRICS).write_text(json.dumps(metrics, indent=2))
        self.logger.close()
        return metrics
