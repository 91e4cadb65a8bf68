"""Batches searched side by side in worker processes (``decode.workers``): CTranslate2's
``inter_threads`` for mt's own search.

A decode step multiplies small matrices, which a second thread speeds up little (oneDNN's
bf16 products hardly at all), while whole batches on separate cores share nothing but memory
bandwidth (benchmarks/README.md). Python threads would take turns on the interpreter lock
between the hundreds of small operations of every step, so each worker is a process, spawned
once (no fork of a process running torch) with its own copy of the model and
``threads // workers`` threads. The parent cleans, cuts, batches and decodes the text and
resolves ``precision=auto``; a worker only searches batches of ids.
"""

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from functools import partial
from multiprocessing import get_context
from typing import Any

import torch

from mt.config import DecodeConfig

Job = tuple[list[list[int]], list[list[int]] | None]  # one batch: its sources and prefixes

_translator: Any = None  # a worker process's own Translator


def threads_per_worker(settings: DecodeConfig) -> int:
    """Each worker's share of ``settings.threads`` (None: the cores this process may use)."""
    threads = settings.threads or len(os.sched_getaffinity(0))
    return max(1, threads // settings.workers)


def _start(load: Callable, checkpoint: Any, settings: DecodeConfig, device: str) -> None:
    """A worker's initializer: the checkpoint loaded once (by ``load``, mt.decoding.loading's
    ``load_translator``, which builds these pools), with one worker's threads."""
    global _translator
    _translator, _ = load(checkpoint, settings, device, target_required=False)


def _ready() -> int:
    return os.getpid()


def _search(settings: DecodeConfig, job: Job, n_best: int) -> list:
    sources, prefixes = job
    return _translator.with_settings(settings)._search(sources, n_best, prefixes)


class SearchWorkers:
    """``settings.workers`` processes, each holding ``checkpoint`` on ``device`` (loaded by
    ``load``): batches go to whichever is free, their results come back in order."""

    def __init__(
        self, load: Callable, checkpoint: Any, settings: DecodeConfig, device: str
    ) -> None:
        self.count = settings.workers
        own = replace(settings, workers=1, threads=threads_per_worker(settings))
        self._pool = ProcessPoolExecutor(
            self.count,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=(load, checkpoint, own, device),
        )
        # Start every worker now (one per waiting task): they load while the parent reads.
        self.started = [self._pool.submit(_ready) for _ in range(self.count)]

    def search(self, settings: DecodeConfig, jobs: list[Job], n_best: int) -> Iterator[list]:
        """Per job (in order), what :meth:`Translator._search` returns for it; ``settings``
        with ``precision`` already resolved, so that every worker searches alike."""
        settings = replace(settings, workers=1, threads=None)
        try:
            yield from self._pool.map(partial(_search, settings, n_best=n_best), jobs)
        except BrokenProcessPool:
            raise ChildProcessError(
                "a decoding worker process stopped (out of memory, or killed): translate "
                "with fewer workers, or workers=1"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def balanced_batch_tokens(settings: DecodeConfig, total_tokens: int) -> int:
    """``settings.batch_tokens``, made smaller where the input would give fewer batches than
    workers (a batch is never split between workers). Not smaller than that: a bf16 product
    gains more from rows than the last batch loses by running alone (benchmarks/README.md)."""
    if settings.workers <= 1:
        return settings.batch_tokens
    share = -(-total_tokens // settings.workers)
    return max(1, min(settings.batch_tokens, share))


def check_workers(settings: DecodeConfig, device: torch.device, exported: bool) -> None:
    """``decode.workers`` > 1 is for mt's own search on a CPU."""
    if settings.workers <= 1:
        return
    if exported:
        raise ValueError(
            f"decode.workers={settings.workers}: an exported model already translates batches "
            "side by side, one per thread (decode.threads); leave decode.workers=1"
        )
    if device.type != "cpu":
        raise ValueError(
            f"decode.workers={settings.workers} runs processes side by side on a CPU; on "
            f"{device.type} one process batches better: leave decode.workers=1"
        )
