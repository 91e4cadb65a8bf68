"""The training loop: setup -> fit (train steps, periodic validation, checkpoints) -> test.

``step`` counts optimizer updates only. The loss of an update is the token *sum* divided by the
number of real target tokens in it (loss.py), and nothing inside the step waits for the device:
the loss is read back only every ``log_every_steps``.
"""

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mt.checkpoint import load_checkpoint, load_weights, model_payload, save_checkpoint
from mt.config import RunConfig
from mt.data import Batch, EvalSet, PreparedData, prepare_data
from mt.loggers import ConsoleLogger, MetricLogger, MultiLogger, TensorBoardLogger
from mt.loss import label_smoothed_nll
from mt.metrics import score
from mt.model import build_model, count_parameters
from mt.optim import build_optimizer, build_scheduler
from mt.runtime import resolve_device, set_seed
from mt.translator import Translator

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters that describe where training is (saved in checkpoints)."""

    step: int = 0
    epoch: int = 0
    best_score: float = -math.inf
    best_step: int = 0
    train_seconds: float = 0.0  # wall clock of the loop, validation included
    validation_seconds: float = 0.0
    tgt_tokens: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: str | Path, *, logger: MetricLogger | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(cfg.train.device)
        self.data: PreparedData = prepare_data(cfg.data, seed=cfg.seed)
        self.tokenizer = self.data.tokenizer
        self.tokenizer.save(self.run_dir / "spm.model")
        self.model = build_model(
            cfg.model, vocab_size=self.tokenizer.vocab_size, pad_id=self.tokenizer.pad_id
        ).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.progress = Progress()
        self.logger = logger or MultiLogger(
            TensorBoardLogger(self.run_dir / "tensorboard"), ConsoleLogger()
        )
        log.info(
            "model: %s, %.1fM parameters, vocabulary %d, device %s; %d training pairs",
            cfg.model.name,
            count_parameters(self.model) / 1e6,
            self.tokenizer.vocab_size,
            self.device,
            len(self.data.train),
        )

    # -- one update ------------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, backward, clip, update. Returns the (detached) summed NLL of the batch."""
        self.model.train()
        batch = batch.to(self.device)
        logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
        loss_sum, nll_sum, _ = label_smoothed_nll(
            logits,
            batch.tgt_out,
            epsilon=self.cfg.train.label_smoothing,
            pad_id=self.tokenizer.pad_id,
        )
        (loss_sum / batch.n_tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.step += 1
        self.progress.tgt_tokens += batch.n_tgt_tokens
        return nll_sum.detach()

    # -- validation -------------------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate_loss(self, eval_set: EvalSet) -> float:
        """Per-token NLL (no smoothing) with teacher forcing."""
        self.model.eval()
        total, n_tokens = 0.0, 0
        for batch in eval_set.ids.batches(self.cfg.train.batch_tokens):
            batch = batch.to(self.device)
            logits = self.model(batch.src, batch.tgt_in)
            _, nll_sum, _ = label_smoothed_nll(
                logits, batch.tgt_out, epsilon=0.0, pad_id=self.tokenizer.pad_id
            )
            total += float(nll_sum)
            n_tokens += batch.n_tgt_tokens
        return total / max(n_tokens, 1)

    def translator(self, beam_size: int) -> Translator:
        dec = self.cfg.decode
        return Translator(
            self.model,
            self.tokenizer,
            beam_size=beam_size,
            length_penalty=dec.length_penalty,
            max_len_a=dec.max_len_a,
            max_len_b=dec.max_len_b,
            batch_tokens=dec.batch_tokens,
        )

    def validate(self) -> dict[str, float]:
        val = self.data.val
        loss = self.evaluate_loss(val)
        metrics = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
        if self.cfg.train.val_bleu:
            hyps = self.translator(beam_size=1).translate(val.sources)
            scores = score(hyps, val.references)
            metrics.update({"val/bleu": scores.bleu, "val/chrf": scores.chrf})
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_payload(self) -> dict:
        p = self.progress
        return {
            **model_payload(self.model, self.cfg, self.tokenizer),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": {
                "step": p.step,
                "epoch": p.epoch,
                "best_score": p.best_score,
                "best_step": p.best_step,
                "train_seconds": p.train_seconds,
                "validation_seconds": p.validation_seconds,
                "tgt_tokens": p.tgt_tokens,
            },
        }

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Log, keep ``best.pt`` (highest val BLEU, or lowest loss without BLEU), save last."""
        p = self.progress
        self.logger.log_dict(metrics, p.step)
        p.history.append({"step": p.step, **metrics})
        current = metrics.get("val/bleu", -metrics["val/loss"])
        payload = self.checkpoint_payload()
        if current > p.best_score:
            p.best_score, p.best_step = current, p.step
            payload["progress"].update(best_score=current, best_step=p.step)
            save_checkpoint(self.run_dir / "best.pt", payload)
        save_checkpoint(self.run_dir / "last.pt", payload)

    # -- the loop ---------------------------------------------------------------------------------

    def should_stop(self, started: float) -> bool:
        t, p = self.cfg.train, self.progress
        if t.max_steps is not None and p.step >= t.max_steps:
            return True
        if t.max_minutes is not None and (time.monotonic() - started) / 60 >= t.max_minutes:
            return True
        return False

    def fit(self) -> dict:
        """Train until a limit is reached, then translate the test split with the best model."""
        t, p = self.cfg.train, self.progress
        rng = np.random.default_rng(self.cfg.seed)
        started = time.monotonic()
        bar = tqdm(
            total=t.max_steps,
            disable=not t.progress_bar,
            unit="step",
            mininterval=2.0,
            dynamic_ncols=True,
        )
        window_nll, window_tokens, window_start = torch.zeros((), device=self.device), 0, started
        stop = False
        while not stop and (t.max_epochs is None or p.epoch < t.max_epochs):
            p.epoch += 1
            for batch in self.data.train.batches(t.batch_tokens, rng):
                window_nll += self.train_step(batch)
                window_tokens += batch.n_tgt_tokens
                bar.update(1)
                if p.step % t.log_every_steps == 0:
                    now = time.monotonic()
                    loss = float(window_nll) / window_tokens
                    speed = window_tokens / (now - window_start)
                    self.logger.log_dict(
                        {
                            "train/loss": loss,
                            "train/ppl": math.exp(min(loss, 50.0)),
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/tgt_tokens_per_s": speed,
                            "train/epoch": p.epoch,
                        },
                        p.step,
                    )
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:.0f}", epoch=p.epoch)
                    window_nll.zero_()
                    window_tokens, window_start = 0, now
                stop = self.should_stop(started)
                if p.step % t.val_every_steps == 0 or stop:
                    pause = time.monotonic()
                    self.after_validation(self.validate())
                    paused = time.monotonic() - pause
                    window_start += paused  # speeds exclude validation
                    p.validation_seconds += paused
                if stop:
                    break
        bar.close()
        if p.step % t.val_every_steps != 0 and not stop:
            self.after_validation(self.validate())  # the epoch limit ended training
        p.train_seconds = time.monotonic() - started
        return self.finish()

    def finish(self) -> dict:
        """Translate the test split with the best checkpoint; write metrics.json."""
        p = self.progress
        best = load_checkpoint(self.run_dir / "best.pt")
        load_weights(self.model, best["model"], source=str(self.run_dir / "best.pt"))
        dec = self.cfg.decode
        test = self.data.test
        hyps = self.translator(beam_size=dec.beam_size).translate(test.sources)
        (self.run_dir / f"{test.name}.hyp").write_text("".join(h + "\n" for h in hyps))
        test_scores = score(hyps, test.references)
        metrics = {
            "test": {
                "split": test.name,
                "beam_size": dec.beam_size,
                "length_penalty": dec.length_penalty,
                **test_scores.as_dict(),
            },
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
                "parameters": count_parameters(self.model),
                "device": str(self.device),
            },
            "data": {"train_pairs": len(self.data.train), "filtered": vars(self.data.filter_stats)},
            "validation_history": p.history,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.logger.log_dict({"test/bleu": test_scores.bleu, "test/chrf": test_scores.chrf}, p.step)
        self.logger.close()
        log.info(
            "test %s: BLEU %.2f chrF %.2f (%s)",
            test.name,
            test_scores.bleu,
            test_scores.chrf,
            test_scores.bleu_signature,
        )
        return metrics
