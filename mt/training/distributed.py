"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` + DDP, set up by torchrun.

``torchrun --nproc_per_node=N scripts/train.py ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment (several
nodes: torchrun's ``--nnodes``/``--rdzv_*`` options). :func:`from_env` joins the process group
(NCCL on GPU, gloo on CPU); a plain ``python scripts/train.py`` gets a one-process context whose
methods do nothing, so the trainer has a single code path.

Control decisions (stop on the time limit, stop on a signal) are taken on every rank together
through a small gloo group on the CPU, so they never wait for the GPU; gradients go through DDP.
"""

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MT_DIST_TIMEOUT_S"
"""Seconds a collective may wait for the other ranks before the job fails (default 1800)."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # gloo process group for CPU-side decisions (None: single process)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over ranks. Flags (0/1) become True everywhere when True on one
        rank (e.g. a SIGTERM that reached only one process, or a wall-clock limit that one rank
        reached a moment earlier); fractions of a budget take the furthest rank's."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.control)
        return tensor.tolist()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (for logging global training loss and token counts)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, group=self.control)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (e.g. per-rank RNG states)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def from_env(device_type: str) -> DistContext:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    missing = [
        k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start distributed "
            "training with torchrun, e.g. torchrun --nproc_per_node=2 scripts/train.py ..."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ValueError(
                f"process with LOCAL_RANK={local_rank} has no GPU of its own: this machine has "
                f"{gpus}. Start at most {gpus} process(es) per node (torchrun "
                f"--nproc_per_node={gpus}), or train on CPUs with train.device=cpu"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    ctx = DistContext(rank, world_size, local_rank, control or dist.group.WORLD)
    log.info(
        "distributed: rank %d of %d (%s, local rank %d)", rank, world_size, backend, local_rank
    )
    return ctx


def update_slices(n_batches: int, *, world_size: int, accum_steps: int) -> list[range]:
    """The epoch's batches (positions ``0..n_batches-1`` of its shuffled order) that each
    optimizer update consumes: ``world_size * accum_steps`` consecutive ones, rank r taking
    positions r, r + world_size, ... of the slice.

    With several ranks the epoch is cut to a multiple of ``world_size`` (every rank needs the
    same number of micro-batches, or DDP would wait forever); the few batches left out differ
    from epoch to epoch, since the order is reshuffled. The last update of an epoch may hold
    fewer than ``accum_steps`` micro-batches per rank.
    """
    usable = n_batches - n_batches % world_size
    per_update = world_size * accum_steps
    return [range(start, min(start + per_update, usable)) for start in range(0, usable, per_update)]
