"""Noticing that other processes hold this run's cores, and saying how many threads to use.

Each operation of a training step is split over ``train.num_threads`` threads and waits for the
slowest. When another process runs on one of those cores, the thread there gets only part of it
and every operation waits for it: training then runs several times slower than it would on the
cores that are free (benchmarks/README.md, "Worker processes for decoding"). Linux counts, per
thread, the time it was ready to run but waited for a CPU (``/proc/self/task/*/schedstat``, its
second field); threads that waited, summed, a large share of a core's time share cores with
other work.
"""

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WAIT_SHARE = 0.2  # waiting this share of a core's time (threads summed): cores are shared
MIN_WINDOW_SECONDS = 120.0  # shorter windows are added to the next (a burst of own work fades)


def thread_waits() -> dict[int, float]:
    """Seconds each thread of this process has waited for a CPU while ready to run, by thread
    id; empty where the kernel does not say (not Linux, no scheduler statistics)."""
    waits = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return waits
    for task in tasks:
        try:
            waits[int(task.name)] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return waits


def shared_cores_warning(
    before: dict[int, float], after: dict[int, float], seconds: float, threads: int
) -> str | None:
    """The warning for a window of ``seconds`` between two :func:`thread_waits`, if the threads
    of a run using ``threads`` of them waited for a CPU more than :data:`WAIT_SHARE` of a core's
    time in all (threads move between cores, so their waits are summed). A core shared with one
    other busy process makes the thread on it wait about half the time: each half a core of
    waiting counts as a core to leave free."""
    if threads < 2 or seconds < MIN_WINDOW_SECONDS:
        return None
    waited = sum(max(0.0, w - before.get(tid, 0.0)) for tid, w in after.items()) / seconds
    if waited <= WAIT_SHARE:
        return None
    free = max(1, threads - math.ceil(2 * waited))
    return (
        f"other processes are using this run's cores: in the last {seconds / 60:.1f} minutes "
        f"its threads waited for a CPU {waited:.1f} cores' worth of the time, and each "
        f"operation waits for its slowest thread; train.num_threads={free} (now {threads}) "
        "may train several times faster while they run"
    )


def cpu_threads(device: torch.device, dist: Any) -> int:
    """The threads a CPU run's rank 0 watches; 1 (nothing to watch) on a GPU or another rank."""
    return torch.get_num_threads() if device.type == "cpu" and dist.is_main else 1


class SharedCoresWatch:
    """Warns once a run (:func:`shared_cores_warning`), looking at windows of at least
    :data:`MIN_WINDOW_SECONDS` each time it is asked."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.warned = False
        self._start()

    def _start(self) -> None:
        self.since, self.waits = time.monotonic(), thread_waits()

    def check(self) -> None:
        if self.warned or self.threads < 2:
            return
        seconds = time.monotonic() - self.since
        if seconds < MIN_WINDOW_SECONDS:
            return
        warning = shared_cores_warning(self.waits, thread_waits(), seconds, self.threads)
        if warning is not None:
            log.warning(warning)
            self.warned = True
        self._start()
