"""A tiny metric-logging protocol and its implementations (TensorBoard, console, in-memory).

The trainer only calls ``log_dict(metrics, step)``; tests pass a ListLogger and read it back.
"""

import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("mt")


class MetricLogger(Protocol):
    def log_dict(self, metrics: dict[str, float], step: int) -> None: ...

    def log_figure(self, name: str, figure: Any, step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        """``purge_step``: when resuming, events after this step (written before a crash) are
        dropped, so the curves continue without duplicates."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_dict(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        self.writer.add_figure(name, figure, step, close=False)  # its maker closes it
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ConsoleLogger:
    """Validation metrics as one readable line in the log."""

    def log_dict(self, metrics: dict[str, float], step: int) -> None:
        if any(name.startswith("val/") for name in metrics):
            text = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            log.info("step %d | %s", step, text)

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class ListLogger:
    """Keeps every call: for tests."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []
        self.figures: list[tuple[int, str, Any]] = []

    def log_dict(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        self.figures.append((step, name, figure))

    def close(self) -> None:
        pass


class MultiLogger:
    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = loggers

    def log_dict(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_dict(metrics, step)

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        for logger in self.loggers:
            logger.log_figure(name, figure, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
