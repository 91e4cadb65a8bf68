"""The server's batcher without a model: a request alone waits ``max_wait_s`` for company and is
then answered, also after the server has been idle for longer than that wait."""

import asyncio

from mt.serving.batcher import Batcher


def echo(settings: tuple, lines: list[str], attention: list[bool]) -> list[str]:
    return [line.upper() for line in lines]


def test_a_lone_request_is_answered_after_the_wait_and_after_idling():
    async def scenario() -> list[list[str]]:
        batcher = Batcher(echo, lambda lines: len(lines), batch_tokens=100, max_wait_s=0.01)
        batcher.start()
        try:
            first = await asyncio.wait_for(batcher.submit(["a"], (1, 1)), 5)
            await asyncio.sleep(0.1)  # idle: ten times the wait
            second = await asyncio.wait_for(batcher.submit(["b", "c"], (1, 1)), 5)
            together = await asyncio.wait_for(
                asyncio.gather(batcher.submit(["d"], (1, 1)), batcher.submit(["e"], (1, 1))), 5
            )
        finally:
            await batcher.stop()
        return [first, second, *together]

    assert asyncio.run(scenario()) == [["A"], ["B", "C"], ["D"], ["E"]]
