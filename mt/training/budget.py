"""The training budget: when training stops (``train.max_steps``, ``max_epochs``,
``max_minutes``, whichever comes first), and how much of it is spent, for the schedules that
decay to zero when it is (mt/training/optim.py)."""

import time
from dataclasses import dataclass, field

from mt.config import TrainConfig
from mt.training.progress import Progress


@dataclass
class Budget:
    cfg: TrainConfig
    started: float = field(default_factory=time.monotonic)
    """The loop's start on the monotonic clock, minus the training time of earlier runs."""
    clock_spent: float = 0.0
    """The clock's fraction that all ranks agreed on after the previous update (the slowest
    rank's), so that every rank uses the same learning rate."""
    batches_per_epoch: int = 0
    """Known once the first epoch's batches are made (0 while streaming: epochs count whole)."""

    def start(self, progress: Progress) -> None:
        """Start the clock, counting the training time of the run this one resumes."""
        self.started = time.monotonic() - progress.train_seconds

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def clock_fraction(self) -> float:
        """Fraction of ``max_minutes`` used so far on this rank (0 without that limit)."""
        minutes = self.cfg.max_minutes
        return self.seconds() / 60 / minutes if minutes else 0.0

    def spent(self, steps_done: int, progress: Progress) -> float:
        """The fraction (0..1) of the budget used up after ``steps_done`` updates: the largest
        of the fractions of the three limits (the one that will end training first). Steps and
        epochs are exact; the clock's part is :attr:`clock_spent`."""
        spent = self.clock_spent
        if self.cfg.max_steps is not None:
            spent = max(spent, steps_done / self.cfg.max_steps)
        if self.cfg.max_epochs is not None:
            per_epoch = self.batches_per_epoch
            within = progress.batch_in_epoch / per_epoch if per_epoch else 0.0
            spent = max(spent, (progress.epoch + within) / self.cfg.max_epochs)
        return min(spent, 1.0)

    def limit_reached(self, progress: Progress) -> bool:
        """The step or time limit (the epoch limit ends the loop over epochs itself)."""
        if self.cfg.max_steps is not None and progress.step >= self.cfg.max_steps:
            return True
        return self.cfg.max_minutes is not None and self.seconds() / 60 >= self.cfg.max_minutes
