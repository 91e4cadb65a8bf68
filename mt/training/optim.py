"""Adam and its learning-rate schedules.

``inverse_sqrt`` is the paper's (Vaswani et al. 2017, section 5.3): its rate is
``d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``; we parametrise it by its peak ``lr``
(reached at ``warmup_steps``) instead, which is easier to tune and to compare across model
sizes: ``lr * min(step / warmup, sqrt(warmup / step))``. It never ends, so it suits runs whose
length is not known in advance.

``linear`` and ``cosine`` warm up the same way, then decay to zero at the end of the training
budget (``train.max_steps`` / ``max_minutes`` / ``max_epochs``, whichever is nearest). Li et al.
(2020, "Budgeted training") found that annealing to zero by the end of a fixed budget beats
schedules that ignore it: the last updates take small steps into a minimum instead of bouncing
at a rate still ~1/4 of the peak (inverse-sqrt's after 16 warm-ups). That pays when the budget
is long enough to converge; on a budget too short for that it starves the model of updates at
a useful rate (docs/results.md has both cases).
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from mt.config import TrainConfig


def inverse_sqrt(step: int, *, warmup_steps: int) -> float:
    """Multiplier of the peak rate at optimizer update ``step`` (1-based)."""
    step = max(step, 1)
    if warmup_steps == 0:
        return 1.0
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def lr_multiplier(step: int, spent: float, *, warmup_steps: int, decay: str) -> float:
    """Multiplier of the peak rate for optimizer update ``step`` (1-based), when the fraction
    ``spent`` (0..1) of the training budget is used up before it (ignored by inverse_sqrt)."""
    if decay == "inverse_sqrt":
        return inverse_sqrt(step, warmup_steps=warmup_steps)
    warm = min(1.0, max(step, 1) / warmup_steps) if warmup_steps else 1.0
    spent = min(max(spent, 0.0), 1.0)
    if decay == "linear":
        return warm * (1.0 - spent)
    if decay == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * spent))
    raise ValueError(f"train.lr_decay={decay!r} must be inverse_sqrt, linear or cosine")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters, which can also skip a non-finite update on the
    # device (``found_inf``, see Trainer.train_update) without the host waiting for it.
    return torch.optim.Adam(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    budget_spent: Callable[[int], float] = lambda steps_done: 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``budget_spent(steps_done)`` tells the decaying schedules how much of the budget is used
    up when ``scheduler.step()`` sets the rate of the next update (the trainer measures it)."""
    # LambdaLR calls the lambda with the number of scheduler.step() calls made so far (0 at
    # construction), i.e. the updates done; +1 makes the first update use step 1.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda n: lr_multiplier(
            n + 1, budget_spent(n), warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay
        ),
    )
