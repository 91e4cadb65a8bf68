"""Adam with the inverse-square-root schedule (Vaswani et al. 2017, section 5.3).

The paper's rate is ``d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``; we parametrise it by
its peak ``lr`` (reached at ``warmup_steps``) instead, which is easier to tune and to compare
across model sizes: ``lr * min(step / warmup, sqrt(warmup / step))``.
"""

import math

import torch
from torch import nn

from mt.config import TrainConfig


def inverse_sqrt(step: int, *, warmup_steps: int) -> float:
    """Multiplier of the peak rate at optimizer update ``step`` (1-based)."""
    step = max(step, 1)
    if warmup_steps == 0:
        return 1.0
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


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
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR calls the lambda with the number of scheduler.step() calls made so far (0 at
    # construction); +1 makes the first update use step 1.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda n: inverse_sqrt(n + 1, warmup_steps=cfg.warmup_steps)
    )
