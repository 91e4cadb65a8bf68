"""What a run reports: the metrics of its log lines, and at the end which checkpoint represents
it (``best.pt``, or the average of the last ones when that scores higher on validation), its
test score, and ``metrics.json``'s summary."""

import logging
import math
from pathlib import Path

import torch

from mt.checkpoint import load_checkpoint, load_weights
from mt.config import RunConfig
from mt.data.corpus import FilterStats
from mt.metrics import mean_scores
from mt.training.checkpointing import CheckpointFiles
from mt.training.progress import Progress
from mt.training.validation import Validator

log = logging.getLogger("mt.training.trainer")


def filter_metrics(stats: FilterStats) -> dict[str, int]:
    return {
        "data/train_pairs_kept": stats.kept,
        "data/dropped_empty": stats.empty,
        "data/dropped_too_long": stats.too_long,
        "data/dropped_length_ratio": stats.bad_ratio,
    }


def training_metrics(loss: float, speed: float, lr: float, p: Progress) -> dict[str, float]:
    """What each log line says of training since the previous one."""
    return {
        "train/loss": loss,
        "train/ppl": math.exp(min(loss, 50.0)),
        "train/lr": lr,
        "train/tgt_tokens_per_s": speed,
        "train/epoch": p.epoch + 1,
        "train/nonfinite_updates": p.nonfinite_updates,
    }


# Validation beyond this share of a run's wall clock earns a warning: every minute of it is one
# less of training within a time budget. The target is about what the single-direction default
# spends (docs/results.md, "At equal wall time").
VALIDATION_SHARE_WARNING = 0.15
VALIDATION_SHARE_TARGET = 0.05


def validation_share_warning(p: Progress, val_every_steps: int) -> str | None:
    """A warning when validating has taken more than :data:`VALIDATION_SHARE_WARNING` of the
    run's wall clock so far (many directions, long validation splits, a fast training step),
    naming the ``train.val_every_steps`` that would bring it near
    :data:`VALIDATION_SHARE_TARGET`; else None."""
    share = p.validation_seconds / p.train_seconds if p.train_seconds > 0 else 0.0
    if share <= VALIDATION_SHARE_WARNING:
        return None
    # Validation v and training u per interval: v / (v + k u) = target for k intervals as one.
    stretch = share * (1 - VALIDATION_SHARE_TARGET) / (VALIDATION_SHARE_TARGET * (1 - share))
    suggested = math.ceil(val_every_steps * stretch / 100) * 100
    return (
        f"validation has taken {share:.0%} of this run's time so far "
        f"({p.validation_seconds / 60:.1f} of {p.train_seconds / 60:.1f} minutes), time the "
        f"budget cannot train; train.val_every_steps={suggested} (now {val_every_steps}) would "
        f"bring it near {VALIDATION_SHARE_TARGET:.0%}"
    )


def warn_validation_share(p: Progress, val_every_steps: int) -> bool:
    """Log :func:`validation_share_warning` if there is one; True when it was logged."""
    warning = validation_share_warning(p, val_every_steps)
    if warning is not None:
        log.warning(warning)
    return warning is not None


def test_metrics(test: dict) -> dict[str, float]:
    """The test scores as logged metrics: ``test/bleu``, ``test/chrf`` (of several directions:
    their means) and each direction's ``test/de-en/bleu``..."""
    metrics = {"test/bleu": test["bleu"], "test/chrf": test["chrf"]}
    for direction, scores in test.get("directions", {}).items():
        metrics.update(
            {f"test/{direction}/bleu": scores["bleu"], f"test/{direction}/chrf": scores["chrf"]}
        )
    return metrics


def run_summary(
    p: Progress, stats: FilterStats, *, stopped_early: bool, parameters: int, device: torch.device
) -> dict:
    """What ``metrics.json`` says of the training itself."""
    return {
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
            "stopped_early": stopped_early,
            "parameters": parameters,
            "device": str(device),
        },
        "data": {"train_pairs": stats.kept, "filtered": vars(stats)},
        "validation_history": p.history,
        "budget_fit": p.budget_fit,
    }


def choose_final_checkpoint(
    files: CheckpointFiles,
    average_last: int,
    model: torch.nn.Module,
    validator: Validator,
    progress: Progress,
) -> tuple[Path, dict | None]:
    """``best.pt``, or ``averaged.pt`` if averaging the last ``average_last`` scores higher on
    validation; and the averaged checkpoint's validation score, when there is one. Leaves the
    averaged weights in ``model`` when it averaged."""
    averaged = files.average_last(average_last)
    if averaged is None:
        return files.best, None
    path, sources = averaged
    load_weights(model, load_checkpoint(path)["model"], source=str(path))
    metrics = validator.validate()
    score_avg = validator.selection_score(metrics)
    log.info(
        "average of %d checkpoints: validation score %.2f (best.pt: %.2f)",
        len(sources),
        score_avg,
        progress.best_score,
    )
    chosen = path if score_avg > progress.best_score else files.best
    return chosen, {"from": sources, "val_score": score_avg}


def final_test(
    files: CheckpointFiles, model: torch.nn.Module, validator: Validator, progress: Progress
) -> dict:
    """The test pass of the checkpoint that represents the run (loaded into ``model``), and
    which one it was."""
    cfg = validator.cfg
    chosen, averaged = choose_final_checkpoint(
        files, cfg.train.average_last, model, validator, progress
    )
    load_weights(model, load_checkpoint(chosen)["model"], source=str(chosen))
    return {
        **test_pass(validator, cfg, files.run_dir),
        "test_checkpoint": chosen.name,
        "averaged": averaged,
    }


def test_pass(validator: Validator, cfg: RunConfig, run_dir: Path) -> dict:
    """Score the model on the test split (the only place the test split is used); of several
    directions, each one's scores and their mean."""
    results = validator.test(run_dir)
    for test, scores in results:
        log.info(
            "test %s%s: BLEU %.2f chrF %.2f (%s)",
            test.name,
            f" {test.direction}" if test.direction else "",
            scores.bleu,
            scores.chrf,
            scores.bleu_signature,
        )
    first = results[0][1]
    summary = {
        "split": results[0][0].name,
        "beam_size": cfg.decode.beam_size,
        "length_penalty": cfg.decode.length_penalty,
        **first.as_dict(),
    }
    if len(results) > 1 or results[0][0].direction:
        summary.update(mean_scores([s.as_dict() for _, s in results]))
        summary["directions"] = {t.direction: s.as_dict() for t, s in results}
    return {"test": summary}
