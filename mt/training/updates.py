"""One optimizer update: forward and backward of each micro-batch, clipping, the step.

The loss of an update is the token *sum* divided by the number of real target tokens in the
whole update (all ranks and micro-batches), so gradients add up to those of the mean loss
however the update is split. An update whose loss or gradient is not finite is skipped *on the
device*: nothing here waits for the device, so the host can queue the next batch while this one
computes; the skips are counted on the device and read only when the loop logs or saves.
"""

import logging
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from mt.config import TrainConfig
from mt.data.batching import Batch
from mt.kernels import LossFunctions
from mt.runtime import autocast
from mt.training.distributed import DistContext
from mt.training.progress import TrainingDiverged

log = logging.getLogger("mt.training.trainer")


class Updater:
    """Runs updates of ``model`` (through ``train_model``: DDP or compiled, or the model)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        train_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss: LossFunctions,
        cfg: TrainConfig,
        precision: str,
        device: torch.device,
        dist: DistContext,
        pad_id: int,
    ) -> None:
        self.model, self.train_model = model, train_model
        self.optimizer, self.scheduler, self.loss = optimizer, scheduler, loss
        self.cfg, self.precision, self.device, self.dist = cfg, precision, device, dist
        self.pad_id = pad_id
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.nonfinite_total = torch.zeros((), dtype=torch.long, device=device)  # skipped, all
        self.nonfinite_run = torch.zeros((), dtype=torch.long, device=device)  # in a row

    def update(self, batches: list[Batch], global_tgt_tokens: int) -> Tensor:
        """Forward and backward each micro-batch, then clip and update once. Returns the
        (detached) summed NLL of this rank's micro-batches, 0 for a skipped update."""
        self.train_model.train()
        scale = self.dist.world_size / global_tgt_tokens  # DDP averages over ranks
        loss_total = torch.zeros((), device=self.device)
        nll_total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            last = i == len(batches) - 1
            # Gradients are all-reduced once per update, with the last micro-batch's backward.
            no_sync = self.train_model.no_sync() if self.dist.enabled and not last else None
            with no_sync or nullcontext():
                with autocast(self.device, self.precision):
                    loss_sum, nll_sum = self.batch_loss(batch)
                loss = loss_sum * scale
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_total += loss_sum.detach()
            nll_total += nll_sum.detach()
        bad = self.step_optimizer(loss_total)
        return torch.where(bad, 0.0, nll_total)

    def step_optimizer(self, loss_total: Tensor) -> Tensor:
        """Clip, then step unless the loss or gradient norm is not finite (decided on the
        device); advance the schedule either way. Returns the 0-dim "skipped" flag."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
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
        return bad

    def batch_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Summed training loss and summed NLL of one micro-batch (0-dim tensors).

        With ``train.rdrop_alpha`` the batch is stacked on itself so that one forward pass
        runs it under two dropout masks (R-Drop, Liang et al. 2021): the loss is the mean of
        the two label-smoothed cross-entropies plus alpha/2 times their symmetric KL.
        """
        eps, alpha = self.cfg.label_smoothing, self.cfg.rdrop_alpha
        if alpha == 0:
            logits = self.train_model(batch.src, batch.tgt_in)  # (B, T, V)
            loss_sum, nll_sum, _ = self.loss.label_smoothed_nll(
                logits, batch.tgt_out, epsilon=eps, pad_id=self.pad_id
            )
            return loss_sum, nll_sum
        src = torch.cat([batch.src, batch.src])  # (2B, S)
        tgt_in = torch.cat([batch.tgt_in, batch.tgt_in])  # (2B, T)
        logits = self.train_model(src, tgt_in)  # (2B, T, V): rows b and B + b, two masks
        tgt_out = torch.cat([batch.tgt_out, batch.tgt_out])  # (2B, T)
        loss_sum, nll_sum, _ = self.loss.label_smoothed_nll(
            logits, tgt_out, epsilon=eps, pad_id=self.pad_id
        )
        b = batch.src.size(0)
        kl_sum = self.loss.symmetric_kl(logits[:b], logits[b:], batch.tgt_out, pad_id=self.pad_id)
        return 0.5 * loss_sum + 0.5 * alpha * kl_sum, 0.5 * nll_sum

    def read_nonfinite(self, *, known: int, step: int, last_good: str) -> int:
        """Read the device-side skip counters (a host sync: only when logging, validating or
        saving); warn about new skips. Returns the total; raises TrainingDiverged after
        ``train.max_nonfinite_updates`` skipped updates in a row."""
        total, run = (int(v) for v in torch.stack([self.nonfinite_total, self.nonfinite_run]))
        if total > known:
            log.warning(
                "%d update(s) with a non-finite loss or gradient skipped by step %d",
                total - known,
                step,
            )
        if run < self.cfg.max_nonfinite_updates:
            return total
        if self.scaler is not None and self.scaler.get_scale() >= 1.0:
            return total  # fp16: overflows are routine while the loss scale settles
        raise TrainingDiverged(
            f"{run} updates in a row had a non-finite loss or gradient (up to step {step}); "
            f"{last_good} holds the last good state. Lower train.lr or raise "
            "train.warmup_steps, then resume or restart."
        )
