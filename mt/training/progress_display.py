"""What a run shows while it trains: where it is in its budget (minutes of ``train.max_minutes``,
updates of ``max_steps`` or passes of ``max_epochs``, whichever ends training first), the updates
the budget holds at the pace so far, the time left, the loss and speed, and the last validation
score. On a terminal it is one tqdm bar redrawn in place; in a log file (no terminal) one line
every ``train.progress_every_steps`` updates instead of carriage-return redraws.
"""

import logging
import math
import sys
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from mt.training.budget import Budget
from mt.training.progress import Progress

log = logging.getLogger("mt.training.trainer")


@dataclass(frozen=True)
class BudgetPosition:
    """Where a run is in the limit that will end it first."""

    fraction: float
    """Of the nearest limit, 0..1 (0 when no limit is set)."""
    where: str
    """e.g. ``16.1/50 min``, ``655/2,000 updates``, ``3.2/20 epochs``."""
    unit: str
    """The nearest limit's: ``min``, ``updates``, ``epochs`` (or ``none``)."""
    predicted_updates: int | None
    """Updates at the end of the budget at the pace so far (None before the first update)."""
    seconds_left: float | None


def budget_position(budget: Budget, p: Progress) -> BudgetPosition:
    """The nearest of the budget's limits, read from the local clock and ``p``."""
    t, elapsed = budget.cfg, budget.seconds()
    limits = []  # (fraction, where, unit)
    if t.max_minutes:
        limits.append(
            (elapsed / 60 / t.max_minutes, f"{elapsed / 60:.1f}/{t.max_minutes:g} min", "min")
        )
    if t.max_steps:
        limits.append((p.step / t.max_steps, f"{p.step:,}/{t.max_steps:,} updates", "updates"))
    if t.max_epochs and budget.batches_per_epoch:
        epochs = p.epoch + p.batch_in_epoch / budget.batches_per_epoch
        limits.append((epochs / t.max_epochs, f"{epochs:.1f}/{t.max_epochs} epochs", "epochs"))
    if not limits:
        return BudgetPosition(0.0, f"{elapsed / 60:.1f} min", "none", None, None)
    fraction, where, unit = max(limits)
    fraction = min(fraction, 1.0)
    if fraction <= 0 or p.step == 0:
        return BudgetPosition(fraction, where, unit, None, None)
    return BudgetPosition(
        fraction,
        where,
        unit,
        predicted_updates=round(p.step / fraction),
        seconds_left=elapsed * (1 - fraction) / fraction,
    )


def clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class ProgressDisplay:
    """The bar (terminal) or the periodic line (log file) of one run; rank 0 only."""

    def __init__(
        self,
        budget: Budget,
        *,
        enabled: bool,
        every_steps: int,
        initial: Progress,
        stream: TextIO | None = None,
    ) -> None:
        stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.budget, self.every_steps = budget, max(1, every_steps)
        self.lines = enabled and not tty
        self.bar = tqdm(
            total=100.0,
            initial=0.0,
            file=stream,
            disable=not (enabled and tty),
            mininterval=2.0,
            dynamic_ncols=True,
            bar_format="{percentage:3.0f}%|{bar}| {postfix}",
        )
        self.loss: float | None = None
        self.speed: float | None = None
        self.val: tuple[float, int] | None = None  # (BLEU, step)
        if initial.history:  # resumed
            last = initial.history[-1]
            if "val/bleu" in last:
                self.val = (last["val/bleu"], last["step"])

    def trained(self, loss: float, speed: float) -> None:
        """The training loss and target tokens/s of the last log interval."""
        self.loss, self.speed = loss, speed

    def validated(self, metrics: dict[str, float], step: int) -> None:
        if "val/bleu" in metrics:
            self.val = (metrics["val/bleu"], step)

    def describe(self, p: Progress, pos: BudgetPosition | None = None) -> str:
        pos = pos or budget_position(self.budget, p)
        parts = [pos.where]
        if pos.unit == "updates":
            pass  # the limit counts updates already
        elif pos.predicted_updates is not None:
            parts.append(f"update {p.step:,} of ~{pos.predicted_updates:,}")
        else:
            parts.append(f"update {p.step:,}")
        if pos.seconds_left is not None:
            parts.append(f"ETA {clock(pos.seconds_left)}")
        if self.loss is not None and math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.3f}")
        if self.speed is not None:
            parts.append(f"{self.speed:,.0f} tok/s")
        if self.val is not None:
            parts.append(f"val BLEU {self.val[0]:.2f} (update {self.val[1]:,})")
        return " | ".join(parts)

    def update(self, p: Progress) -> None:
        """After each update."""
        if self.lines:
            if p.step % self.every_steps == 0:
                log.info("%s", self.describe(p))
            return
        if self.bar.disable:
            return
        pos = budget_position(self.budget, p)  # once per update, for the bar and its text
        self.bar.set_postfix_str(self.describe(p, pos), refresh=False)
        self.bar.update(100.0 * pos.fraction - self.bar.n)

    def close(self) -> None:
        self.bar.close()
