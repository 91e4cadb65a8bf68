"""Requests from many clients -> shared batches, translated one batch at a time off the event loop.

Each request's lines join a queue. The worker takes the first waiting request, waits at most
``max_wait_s`` for others, and takes requests until their source tokens fill ``batch_tokens``;
requests with the same search settings are translated together, on one worker thread, so the
event loop keeps answering (``/health``) while the model is busy. Throughput rises with
concurrency because a batch of many sentences costs little more than one.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    lines: list[str]
    settings: tuple  # (beam_size, n_best, tgt_lang): requests share a search only if equal
    tokens: int
    future: asyncio.Future
    extra: dict = field(default_factory=dict)  # e.g. attention=True


# settings, all lines of the batch, per line whether its request asked for attention
# -> one result per line, in order
BatchFunction = Callable[[tuple, list[str], list[bool]], list[Any]]


class Batcher:
    def __init__(
        self,
        run: BatchFunction,
        count_tokens: Callable[[list[str]], int],
        *,
        batch_tokens: int,
        max_wait_s: float,
    ) -> None:
        self.run, self.count_tokens = run, count_tokens
        self.batch_tokens, self.max_wait_s = batch_tokens, max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mt-model")
        self.task: asyncio.Task | None = None
        self.batches = 0  # counters, for /info and tests
        self.batched_requests = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """After the server has answered its requests: end the worker."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, lines: list[str], settings: tuple, **extra) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Job(lines, settings, self.count_tokens(lines), future, extra))
        return await future

    async def _work(self) -> None:
        waiting: deque[Job] = deque()
        while True:
            if not waiting:
                waiting.append(await self.queue.get())
            await self._gather(waiting)
            batch = self._take(waiting)
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self.executor, self._run, batch)
            except Exception as err:  # noqa: BLE001  (each request gets the error, not a hang)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            self.batched_requests += len(batch)
            for job, result in zip(batch, results):
                if not job.future.done():  # the client may have gone
                    job.future.set_result(result)

    async def _gather(self, waiting: deque[Job]) -> None:
        """Collect queued requests until the token budget is met or ``max_wait_s`` passed."""
        deadline = time.monotonic() + self.max_wait_s
        while sum(j.tokens for j in waiting) < self.batch_tokens:
            if self.queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    return
            else:
                waiting.append(self.queue.get_nowait())

    def _take(self, waiting: deque[Job]) -> list[Job]:
        """The oldest request and those after it with its settings, within the token budget
        (the oldest always goes, whatever its size); the others wait for the next batch."""
        first = waiting.popleft()
        batch, tokens, kept = [first], first.tokens, deque()
        while waiting:
            job = waiting.popleft()
            if job.settings == first.settings and tokens + job.tokens <= self.batch_tokens:
                batch.append(job)
                tokens += job.tokens
            else:
                kept.append(job)
        waiting.extend(kept)
        return batch

    def _run(self, batch: list[Job]) -> list[list[Any]]:
        """On the model thread: one call for every line of the batch, split back per request."""
        lines = [line for job in batch for line in job.lines]
        flags = [bool(job.extra.get("attention")) for job in batch for _ in job.lines]
        flat = self.run(batch[0].settings, lines, flags)
        out, pos = [], 0
        for job in batch:
            out.append(flat[pos : pos + len(job.lines)])
            pos += len(job.lines)
        return out
