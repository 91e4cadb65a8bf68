"""The training loop: setup -> fit (train steps, periodic validation, checkpoints) -> test.

``step`` counts optimizer updates, including the rare ones skipped on the device because their
loss or gradient was not finite (so that no update has to wait for the device to find out).
The loss of an update is the token *sum* divided by the number of real target tokens in it
(loss.py); the loss and the skip counters are read back only every ``log_every_steps``.

Resuming is exact on CPU: a checkpoint holds the model, optimizer and schedule, the RNG state,
the position in the epoch's batch order (which depends only on the seed and the epoch number)
and the best-score bookkeeping, so a run that is killed and resumed, any number of times, ends
with the same weights as one that never stopped.

One update consumes ``world_size x accum_steps`` batches of the epoch's order (see
:func:`mt.training.distributed.update_slices`): each rank forwards its own micro-batches and
the loss is divided by the target tokens of all of them, so 2 ranks, 2 accumulation steps or one
batch twice as large give the same update. Under torchrun only rank 0 logs, validates and writes files.
"""

import json
import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mt.checkpoint import (
    average_checkpoints,
    load_checkpoint,
    load_weights,
    model_payload,
    save_checkpoint,
)
from mt.config import RunConfig
from mt.data.batching import Batch, ParallelData
from mt.data.corpus import PreparedData
from mt.data.prepare import prepare_data
from mt.data.tokenizer import Tokenizer
from mt.kernels import loss_functions, use_kernels
from mt.loggers import ConsoleLogger, MetricLogger, MultiLogger, TensorBoardLogger
from mt.model.transformer import build_model, count_parameters
from mt.runtime import autocast, resolve_precision, set_seed, use_device
from mt.training import distributed
from mt.training.optim import build_optimizer, build_scheduler
from mt.training.progress import (
    Meter,
    Progress,
    TrainingDiverged,
    TrainingInterrupted,
    stop_on_signals,
)
from mt.training.validation import Validator

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: str | Path, *, logger: MetricLogger | None = None
    ) -> None:
        self.cfg = cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = use_device(cfg.train.device)
        self.dist = distributed.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # Every rank works in rank 0's run directory (Hydra's timestamped default may differ).
        self.run_dir = Path(self.dist.gather(str(run_dir))[0])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)  # the same initial weights on every rank
        resume_from = self.resume_path()
        state = load_checkpoint(resume_from) if resume_from else None
        tokenizer = Tokenizer(state["tokenizer"]) if state else None
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 trains the tokenizer and fills the Arrow cache first
            tokenizer = tokenizer or Tokenizer.load(self.run_dir / "spm.model")
        self.data: PreparedData = prepare_data(cfg.data, seed=cfg.seed, tokenizer=tokenizer)
        self.tokenizer = self.data.tokenizer
        if self.dist.is_main:
            self.tokenizer.save(self.run_dir / "spm.model")
            self.dist.barrier()
        self.model = build_model(
            cfg.model, vocab_size=self.tokenizer.vocab_size, pad_id=self.tokenizer.pad_id
        ).to(self.device)
        use_kernels(self.model, cfg.model.kernels)
        self.loss = loss_functions(cfg.model.kernels)
        self.validator = Validator(self.model, self.tokenizer, self.data, cfg, self.device)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.progress = Progress()
        # The budget fraction the decaying schedules follow (see budget_spent): the wall-clock
        # part is agreed on by all ranks in the loop, so that they all use the same rate.
        self.clock_spent = 0.0
        self.stopped_early = False  # by train.patience
        self.batches_per_epoch = 0  # known once the first epoch's batches are made (not streamed)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.budget_spent)
        # Rank 0's choice for all: ``auto`` may time a probe on CPUs, and ranks must agree.
        self.precision = self.dist.gather(resolve_precision(cfg.train.precision, self.device))[0]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        if self.dist.rank:
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)  # own dropout masks
        if state:
            self.restore(state, source=str(resume_from))
        # Skipped updates, counted on the device (see train_update).
        self.nonfinite_total = torch.tensor(self.progress.nonfinite_updates, device=self.device)
        self.nonfinite_run = torch.zeros((), dtype=torch.long, device=self.device)
        # DDP averages gradients over ranks during backward; ``self.model`` stays the bare
        # module (validation, search, checkpoints).
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model, dynamic=True)
        if logger is not None:
            self.logger = logger
        elif self.dist.is_main:
            self.logger = MultiLogger(
                # Events after the checkpoint's step were written after it was saved: drop them.
                TensorBoardLogger(
                    self.run_dir / "tensorboard",
                    purge_step=self.progress.step + 1 if self.progress.step else None,
                ),
                ConsoleLogger(),
            )
        else:
            self.logger = MultiLogger()  # only rank 0 logs
        if not state and not cfg.data.streaming:
            self.log_filter_stats()
        log.info(
            "model: %s, %.1fM parameters, vocabulary %d, device %s, %s; %s training pairs",
            cfg.model.name,
            count_parameters(self.model) / 1e6,
            self.tokenizer.vocab_size,
            self.device,
            self.precision,
            "streamed" if cfg.data.streaming else len(self.data.train),
        )

    def log_filter_stats(self) -> None:
        """Kept / dropped training pairs (for a streamed corpus: of the epoch just read)."""
        stats = self.data.filter_stats
        self.logger.log_dict(
            {
                "data/train_pairs_kept": stats.kept,
                "data/dropped_empty": stats.empty,
                "data/dropped_too_long": stats.too_long,
                "data/dropped_length_ratio": stats.bad_ratio,
            },
            self.progress.step,
        )

    # -- resuming --------------------------------------------------------------------------------

    def resume_path(self) -> Path | None:
        resume = self.cfg.train.resume
        if resume is None:
            return None
        if resume == "auto":
            last = self.run_dir / "last.pt"
            return last if last.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(
                f"train.resume={resume}: no such checkpoint (use train.resume=auto to continue "
                "the run directory's last.pt, or give the path of a .pt file)"
            )
        return path

    def restore(self, state: dict, *, source: str) -> None:
        if "optimizer" not in state or "progress" not in state:
            raise ValueError(f"{source} holds weights only (no optimizer state): cannot resume")
        load_weights(self.model, state["model"], source=source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        per_rank = rng.get("ranks") or [{"torch": rng["torch"], "cuda": rng.get("cuda")}]
        if len(per_rank) != self.dist.world_size:
            log.warning(
                "%s was written by %d process(es), this run has %d: random streams (dropout) "
                "restart, so the run will not be an exact continuation",
                source,
                len(per_rank),
                self.dist.world_size,
            )
        mine = per_rank[min(self.dist.rank, len(per_rank) - 1)]
        torch.set_rng_state(mine["torch"])
        if self.device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            source,
            self.progress.step,
            self.progress.epoch + 1,
            self.progress.batch_in_epoch,
        )

    # -- one update ------------------------------------------------------------------------------

    def train_update(self, batches: list[Batch], global_tgt_tokens: int) -> torch.Tensor:
        """Forward and backward each micro-batch, then clip and update once. Returns the
        (detached) summed NLL of this rank's micro-batches.

        ``global_tgt_tokens`` counts the target tokens of the whole update, all ranks and
        micro-batches together: each micro-batch's loss *sum* is divided by it, so gradients add
        up to the gradient of the mean loss over the update however it is split (DDP averages
        over ranks, hence the factor ``world_size``).

        An update whose loss or gradient norm is not finite is skipped *on the device* (the
        fused Adam kernel's ``found_inf``): nothing here waits for the device, so the host can
        queue the next batch while this one computes. It still counts as a step (and advances
        the learning-rate schedule); skips are counted on the device and read where the loop
        reads the loss anyway (:meth:`check_nonfinite`).
        """
        self.train_model.train()
        scale = self.dist.world_size / global_tgt_tokens
        loss_total = torch.zeros((), device=self.device)
        nll_total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            last = i == len(batches) - 1
            # Gradients are all-reduced once per update, with the last micro-batch's backward.
            no_sync = self.train_model.no_sync() if self.dist.enabled and not last else None
            with no_sync or nullcontext():
                with self.autocast():
                    loss_sum, nll_sum = self.batch_loss(batch)
                loss = loss_sum * scale
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_total += loss_sum.detach()
            nll_total += nll_sum.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.train.clip_norm
        )
        # The gradient norm is the same on every rank (after the all-reduce), the loss is not:
        # with several ranks only the former decides, so that all of them skip together.
        check = grad_norm if self.dist.enabled else grad_norm + loss_total
        bad = ~torch.isfinite(check)  # 0-dim bool, on the device
        self.nonfinite_total += bad
        self.nonfinite_run = torch.where(bad, self.nonfinite_run + 1, 0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # passes its own found_inf to the fused kernel
            self.scaler.update()
        else:
            self.optimizer.found_inf = bad.float()  # the fused Adam kernel skips when 1
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the rate of the next update
        self.progress.step += 1
        self.progress.tgt_tokens += global_tgt_tokens
        return torch.where(bad, 0.0, nll_total)

    def batch_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed training loss and summed NLL of one micro-batch (0-dim tensors).

        With ``train.rdrop_alpha`` the batch is stacked on itself so that one forward pass
        runs it under two dropout masks (R-Drop, Liang et al. 2021): the loss is the mean of
        the two label-smoothed cross-entropies plus alpha/2 times their symmetric KL.
        """
        t = self.cfg.train
        pad_id = self.tokenizer.pad_id
        if t.rdrop_alpha == 0:
            logits = self.train_model(batch.src, batch.tgt_in)  # (B, T, V)
            loss_sum, nll_sum, _ = self.loss.label_smoothed_nll(
                logits, batch.tgt_out, epsilon=t.label_smoothing, pad_id=pad_id
            )
            return loss_sum, nll_sum
        src = torch.cat([batch.src, batch.src])  # (2B, S)
        tgt_in = torch.cat([batch.tgt_in, batch.tgt_in])  # (2B, T)
        logits = self.train_model(src, tgt_in)  # (2B, T, V): rows b and B + b, two masks
        loss_sum, nll_sum, _ = self.loss.label_smoothed_nll(
            logits,
            torch.cat([batch.tgt_out, batch.tgt_out]),  # (2B, T)
            epsilon=t.label_smoothing,
            pad_id=pad_id,
        )
        b = batch.src.size(0)
        kl_sum = self.loss.symmetric_kl(logits[:b], logits[b:], batch.tgt_out, pad_id=pad_id)
        return 0.5 * loss_sum + 0.5 * t.rdrop_alpha * kl_sum, 0.5 * nll_sum

    def autocast(self):
        """Mixed precision for the forward pass and the loss (``train.precision``)."""
        return autocast(self.device, self.precision)

    def check_nonfinite(self) -> None:
        """Read the device-side skip counters (a host sync: called only with logging,
        validation and saving). Raises TrainingDiverged after ``max_nonfinite_updates`` skipped
        updates in a row."""
        p = self.progress
        total, run = (int(v) for v in torch.stack([self.nonfinite_total, self.nonfinite_run]))
        if total > p.nonfinite_updates:
            log.warning(
                "%d update(s) with a non-finite loss or gradient skipped by step %d",
                total - p.nonfinite_updates,
                p.step,
            )
        p.nonfinite_updates = total
        if run < self.cfg.train.max_nonfinite_updates:
            return
        if self.scaler is not None and self.scaler.get_scale() >= 1.0:
            return  # fp16: overflows are routine while the loss scale settles
        raise TrainingDiverged(
            f"{run} updates in a row had a non-finite loss or gradient (up to step {p.step}); "
            f"{self.run_dir / 'last.pt'} holds the last good state. Lower train.lr or raise "
            "train.warmup_steps, then resume or restart."
        )

    # -- validation -------------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Validation loss (and greedy BLEU): see :class:`mt.training.validation.Validator`."""
        return self.validator.validate()

    def validate_and_save(self) -> None:
        """Rank 0 validates (the others wait in ``save``); then every rank takes part in
        saving."""
        if not self.dist.is_main:
            self.save()
            return
        self.after_validation(self.validate())

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Log, keep ``best.pt`` (highest val BLEU, or lowest loss without BLEU), save last."""
        p = self.progress
        self.logger.log_dict(metrics, p.step)
        if self.cfg.train.val_attention_plot and self.data.val.sources:
            self.log_attention()
        p.history.append({"step": p.step, **metrics})
        current = metrics.get("val/bleu", -metrics["val/loss"])
        improved = current > p.best_score
        if improved:
            p.best_score, p.best_step = current, p.step
        self.save(best=improved)

    def patience_exhausted(self) -> bool:
        """Whether the last ``train.patience`` validations all failed to beat the best score.

        Called by every rank at the same points; rank 0 keeps the validation history during
        the run, so its verdict is shared and all ranks stop together."""
        patience, p = self.cfg.train.patience, self.progress
        if not patience:
            return False
        stale = sum(1 for h in p.history if h["step"] > p.best_step)
        if not self.dist.max([float(stale >= patience)])[0]:
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

    def log_attention(self) -> None:
        """The first validation sentence's cross-attention (last layer) as a TensorBoard image."""
        try:
            figure = self.validator.attention_figure()
        except ImportError:
            log.warning("matplotlib is not installed: no attention heatmaps in TensorBoard")
            self.cfg.train.val_attention_plot = False
            return
        self.logger.log_figure("val/cross_attention", figure, self.progress.step)
        # The figure is closed here, where it was made, not by a logger: pyplot keeps every
        # figure until closed, and one per validation would pile up over a long run.
        import matplotlib.pyplot as plt

        plt.close(figure)

    # -- checkpoints ------------------------------------------------------------------------------

    def rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def checkpoint_payload(self, rng_states: list[dict]) -> dict:
        return {
            **model_payload(self.model, self.cfg, self.tokenizer),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "progress": asdict(self.progress),
            "rng": {**rng_states[0], "ranks": rng_states},  # every rank's, in rank order
        }

    def save(self, *, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``, and a numbered copy when ``keep_last`` > 0).

        Called on every rank at the same step: each contributes its RNG state, rank 0 writes.
        """
        self.check_nonfinite()
        rng_states = self.dist.gather(self.rng_state())
        if not self.dist.is_main:
            return
        payload = self.checkpoint_payload(rng_states)
        save_checkpoint(self.run_dir / "last.pt", payload)
        if best:
            save_checkpoint(self.run_dir / "best.pt", payload)
        keep = self.cfg.train.keep_last
        if keep > 0:
            save_checkpoint(self.run_dir / f"step_{self.progress.step}.pt", payload)
            numbered = sorted(self.run_dir.glob("step_*.pt"), key=lambda q: int(q.stem[5:]))
            for old in numbered[:-keep]:
                old.unlink()

    # -- the loop ---------------------------------------------------------------------------------

    def budget_spent(self, steps_done: int) -> float:
        """The fraction (0..1) of the training budget used up after ``steps_done`` updates: the
        largest of the fractions of ``train.max_steps``, ``max_epochs`` and ``max_minutes``
        (the limit that will end training first). Steps and epochs are exact; the clock's part
        is the one all ranks agreed on after the previous update (``clock_spent``)."""
        t, p = self.cfg.train, self.progress
        spent = self.clock_spent
        if t.max_steps is not None:
            spent = max(spent, steps_done / t.max_steps)
        if t.max_epochs is not None:
            # Streamed epochs are counted whole: their number of batches is not known ahead.
            within = p.batch_in_epoch / self.batches_per_epoch if self.batches_per_epoch else 0.0
            spent = max(spent, (p.epoch + within) / t.max_epochs)
        return min(spent, 1.0)

    def clock_fraction(self) -> float:
        """Fraction of ``train.max_minutes`` used so far on this rank (0 without that limit)."""
        minutes = self.cfg.train.max_minutes
        return (time.monotonic() - self.started) / 60 / minutes if minutes else 0.0

    def limit_reached(self, started: float) -> bool:
        t, p = self.cfg.train, self.progress
        if t.max_steps is not None and p.step >= t.max_steps:
            return True
        return t.max_minutes is not None and (time.monotonic() - started) / 60 >= t.max_minutes

    def fit(self) -> dict:
        """Train until a limit is reached, then translate the test split with the best model.

        Raises TrainingInterrupted after saving when SIGINT/SIGTERM arrives.
        """
        with stop_on_signals() as interrupted:
            stopped = self.train_loop(interrupted)
        if stopped:
            raise TrainingInterrupted(
                f"training stopped at step {self.progress.step} and saved "
                f"{self.run_dir / 'last.pt'}; continue it with: python scripts/train.py "
                f"<same options> train.resume=auto hydra.run.dir={self.run_dir}"
            )
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 alone translates the test split; end together
            return {}
        metrics = self.finish()
        self.dist.barrier()
        return metrics

    def train_loop(self, interrupted: threading.Event) -> bool:
        """Update until a limit is reached; True when stopped by a signal (after saving)."""
        t, p = self.cfg.train, self.progress
        self.interrupted = interrupted
        self.started = time.monotonic() - p.train_seconds
        self.clock_spent = self.dist.max([self.clock_fraction()])[0]
        self.stopped_early = self.patience_exhausted()
        if p.step and (self.stopped_early or self.limit_reached(self.started)):
            return False  # resumed after training had ended (e.g. a crash during the test pass)
        self.bar = tqdm(
            total=t.max_steps,
            initial=p.step,
            disable=not (t.progress_bar and self.dist.is_main),
            unit="step",
            mininterval=2.0,
            dynamic_ncols=True,
        )
        self.meter = Meter(torch.zeros((), device=self.device))
        self.validated_at = p.history[-1]["step"] if p.history else -1
        try:
            while t.max_epochs is None or p.epoch < t.max_epochs:
                windows = self.data.train.windows(skip=p.window_in_epoch, epoch=p.epoch)
                for window in windows:
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
        finally:
            self.bar.close()
            self.data.train.close()  # background workers (streaming, subword sampling)
        if self.validated_at != p.step:  # the epoch limit ended training between validations
            p.train_seconds = time.monotonic() - self.started
            self.validate_and_save()
        return False

    def train_window(self, data: ParallelData, groups: list[np.ndarray]) -> bool | None:
        """The updates over one window's batches (the whole epoch, unless streaming). Returns
        None to go on, else whether training was stopped by a signal."""
        t, p, m, world = self.cfg.train, self.progress, self.meter, self.dist.world_size
        if not self.cfg.data.streaming:
            self.batches_per_epoch = len(groups)  # one window is the whole epoch
        for update in distributed.update_slices(
            len(groups), world_size=world, accum_steps=t.accum_steps
        ):
            if update.start < p.batch_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            mine = [data.collate(groups[i]) for i in update[self.dist.rank :: world]]
            global_tokens = sum(data.n_tgt_tokens(groups[i]) for i in update)
            m.nll += self.train_update(mine, global_tokens)
            p.batch_in_epoch = update.stop
            m.tokens += global_tokens
            m.local_tokens += sum(b.n_tgt_tokens for b in mine)
            self.bar.update(1)
            if p.step % t.log_every_steps == 0:
                self.check_nonfinite()
                now = time.monotonic()
                nll, tokens = self.dist.sum([float(m.nll), m.local_tokens])
                self.log_training(nll / tokens, m.tokens / (now - m.start))
                m.reset(now)
            # Every rank takes the same decisions: a limit or a signal on one stops all, and
            # the clock of the slowest rank sets the learning rate of all.
            limit, stop, self.clock_spent = self.dist.max(
                [self.limit_reached(self.started), self.interrupted.is_set(), self.clock_fraction()]
            )
            limit, stop = bool(limit), bool(stop)
            p.train_seconds = time.monotonic() - self.started
            if p.step % t.val_every_steps == 0 or limit:
                pause = time.monotonic()
                self.validate_and_save()
                self.validated_at = p.step
                paused = time.monotonic() - pause
                m.start += paused  # speeds exclude validation
                p.validation_seconds += paused
                if self.patience_exhausted():
                    self.stopped_early = True
                    return False
            elif p.step % t.save_every_steps == 0 or stop:
                self.save()
            if limit or stop:
                return stop
        return None

    def log_training(self, loss: float, speed: float) -> None:
        p = self.progress
        self.logger.log_dict(
            {
                "train/loss": loss,
                "train/ppl": math.exp(min(loss, 50.0)),
                "train/lr": self.scheduler.get_last_lr()[0],
                "train/tgt_tokens_per_s": speed,
                "train/epoch": p.epoch + 1,
                "train/nonfinite_updates": p.nonfinite_updates,
            },
            p.step,
        )
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:.0f}", epoch=p.epoch + 1)

    def choose_final_checkpoint(self) -> tuple[Path, dict | None]:
        """``best.pt``, or ``averaged.pt`` if averaging the last N scores higher on validation;
        and the averaged checkpoint's validation score, when there is one."""
        best = self.run_dir / "best.pt"
        n = self.cfg.train.average_last
        numbered = sorted(self.run_dir.glob("step_*.pt"), key=lambda q: int(q.stem[5:]))[-n:]
        if n < 2 or len(numbered) < 2:
            return best, None
        averaged = self.run_dir / "averaged.pt"
        save_checkpoint(averaged, average_checkpoints(numbered))
        load_weights(self.model, load_checkpoint(averaged)["model"], source=str(averaged))
        metrics = self.validate()
        score_avg = metrics.get("val/bleu", -metrics["val/loss"])
        summary = {"from": [q.name for q in numbered], "val_score": score_avg}
        log.info(
            "average of %d checkpoints: validation score %.2f (best.pt: %.2f)",
            len(numbered),
            score_avg,
            self.progress.best_score,
        )
        return (averaged if score_avg > self.progress.best_score else best), summary

    def finish(self) -> dict:
        """Translate the test split with the best checkpoint (or the average of the last ones,
        when ``train.average_last`` is set and it scores higher on validation); write
        metrics.json. With ``train.test_at_end=false`` the test split is left alone."""
        p, stats = self.progress, self.data.filter_stats
        metrics: dict = {
            "best_checkpoint": {"step": p.best_step, "val_score": p.best_score},
            "train": {
                "steps": p.step,
                "epochs": p.epoch,
                "minutes": round(p.train_seconds / 60, 2),
                "tgt_tokens": p.tgt_tokens,
                "validation_minutes": round(p.validation_seconds / 60, 2),
                "tgt_tokens_per_s": round(
                    p.tgt_tokens / max(p.train_seconds - p.validation_seconds, 1e-9), 1
                ),
                "stopped_early": self.stopped_early,
                "parameters": count_parameters(self.model),
                "device": str(self.device),
            },
            "data": {"train_pairs": stats.kept, "filtered": vars(stats)},
            "validation_history": p.history,
        }
        if self.cfg.train.test_at_end:
            metrics.update(self.test_pass())
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.logger.close()
        return metrics

    def test_pass(self) -> dict:
        """Score the chosen checkpoint on the test split (the only place the test split is used)."""
        chosen, averaged = self.choose_final_checkpoint()
        load_weights(self.model, load_checkpoint(chosen)["model"], source=str(chosen))
        dec, test = self.cfg.decode, self.data.test
        test_scores = self.validator.test(self.run_dir)
        self.logger.log_dict(
            {"test/bleu": test_scores.bleu, "test/chrf": test_scores.chrf}, self.progress.step
        )
        log.info(
            "test %s: BLEU %.2f chrF %.2f (%s)",
            test.name,
            test_scores.bleu,
            test_scores.chrf,
            test_scores.bleu_signature,
        )
        return {
            "test": {
                "split": test.name,
                "beam_size": dec.beam_size,
                "length_penalty": dec.length_penalty,
                **test_scores.as_dict(),
            },
            "test_checkpoint": chosen.name,
            "averaged": averaged,
        }
