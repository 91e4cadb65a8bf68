"""Checkpoint policy of a training run: where it resumes from, what it writes and keeps
(``last.pt``, ``best.pt``, the last ``train.keep_last`` numbered ones), and how it restores the
exact state of the run it continues. The file format is mt/checkpoint.py's."""

import fcntl
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mt import files
from mt.checkpoint import average_checkpoints, load_weights, save_checkpoint
from mt.training.distributed import DistContext
from mt.training.progress import Progress

log = logging.getLogger("mt.training.trainer")


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``train.resume``: ``auto`` -> the run directory's ``last.pt`` if any; a path must exist.
    Without it, a run directory that already holds a run is refused: starting over there would
    overwrite its checkpoints and metrics."""
    if resume is None:
        if (run_dir / files.LAST).exists():
            raise ValueError(
                f"{run_dir} already holds a training run (last.pt): continue it with "
                "train.resume=auto, or start afresh in another directory (hydra.run.dir=...) "
                "or after deleting its *.pt files"
            )
        return None
    if resume == "auto":
        last = run_dir / files.LAST
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(
            f"train.resume={resume}: no such checkpoint (use train.resume=auto to continue "
            "the run directory's last.pt, or give the path of a .pt file)"
        )
    return path


class RunLock:
    """An exclusive lock on a run directory for the life of the process that trains in it:
    a second training started there refuses instead of mixing its files with the first's."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "train.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ValueError(
                f"another training (process {owner}) is running in {run_dir}: wait for it to "
                "end, or give this one another directory (hydra.run.dir=...)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


@dataclass
class CheckpointFiles:
    """The checkpoint files of one run directory."""

    run_dir: Path
    keep_last: int = 0

    @property
    def last(self) -> Path:
        return self.run_dir / files.LAST

    @property
    def best(self) -> Path:
        return self.run_dir / files.BEST

    def numbered(self) -> list[Path]:
        """The kept ``step_<N>.pt`` files, oldest first."""
        return sorted(self.run_dir.glob("step_*.pt"), key=lambda q: int(q.stem[5:]))

    def save(self, payload: dict, *, step: int, best: bool) -> None:
        """Write ``best.pt`` when ``best``, ``step_<step>.pt`` when keeping numbered checkpoints,
        then ``last.pt``, then drop numbered ones beyond ``keep_last``.

        ``last.pt`` is the commit point: resuming starts from it, so it is written after the
        files that belong to its step. A kill before it leaves the previous ``last.pt``, and the
        resumed run redoes this step and writes them again."""
        if best:
            save_checkpoint(self.best, payload)
        if self.keep_last > 0:
            save_checkpoint(self.run_dir / f"step_{step}.pt", payload)
        save_checkpoint(self.last, payload)
        if self.keep_last > 0:
            for old in self.numbered()[: -self.keep_last]:
                old.unlink()

    def average_last(self, n: int) -> tuple[Path, list[str]] | None:
        """Write ``averaged.pt``, the mean of the last ``n`` numbered checkpoints (Vaswani et
        al. 2017, section 6.1); None when fewer than two are there to average."""
        numbered = self.numbered()[-n:]
        if n < 2 or len(numbered) < 2:
            return None
        averaged = self.run_dir / "averaged.pt"
        save_checkpoint(averaged, average_checkpoints(numbered))
        return averaged, [q.name for q in numbered]


def training_payload(
    model_part: dict,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    precision: str,
    progress: Progress,
    rng_states: list[dict],
) -> dict:
    """A training checkpoint: the model part (mt/checkpoint.py) and all it takes to resume."""
    return {
        **model_part,
        "run_id": progress.run_id,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "precision": precision,  # resolved: a resumed ``auto`` run keeps it
        "progress": asdict(progress),
        "rng": {**rng_states[0], "ranks": rng_states},  # every rank's, in rank order
    }


def rng_state(device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_training_state(
    state: dict,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    dist: DistContext,
    device: torch.device,
    source: str,
    sampled_subwords: bool = False,
) -> Progress:
    """Load weights, optimizer, schedule, loss scaler and this rank's RNG state from a training
    checkpoint; returns its progress."""
    if "optimizer" not in state or "progress" not in state:
        raise ValueError(f"{source} holds weights only (no optimizer state): cannot resume")
    load_weights(model, state["model"], source=source)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    per_rank = rng.get("ranks") or [{"torch": rng["torch"], "cuda": rng.get("cuda")}]
    if len(per_rank) != dist.world_size:
        log.warning(
            "%s was written by %d process(es), this run has %d: random streams (dropout) "
            "restart, so the run will not be an exact continuation",
            source,
            len(per_rank),
            dist.world_size,
        )
    mine = per_rank[min(dist.rank, len(per_rank) - 1)]
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and mine.get("cuda") is not None:
        torch.cuda.set_rng_state(mine["cuda"], device)
    progress = Progress(**state["progress"])
    if sampled_subwords:
        log.warning(
            "data.subword_alpha > 0: SentencePiece samples other segmentations in this process "
            "than the interrupted one would have, so training continues from the same state "
            "but not bit-identically"
        )
    log.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        source,
        progress.step,
        progress.epoch + 1,
        progress.batch_in_epoch,
    )
    return progress
