"""Lanes: one sequential learner's running state, and streaming several at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from rose.config import LearnerConfig
from rose.tracking import IterationState


@dataclass
class Lane:
    """One sequential learner's running state (a parallel learner has several)."""

    learner_id: int | str | None
    config: LearnerConfig | None = None
    pending_config: LearnerConfig | None = None
    state: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    end_reason: str = "max_iter_reached"

    def take_pending_config(self) -> None:
        if self.pending_config is not None:
            self.config, self.pending_config = self.pending_config, None


async def aclose(agen: Any) -> None:
    """Close an async generator (anything without ``aclose`` needs nothing)."""
    close = getattr(agen, "aclose", None)
    if close is not None:
        await close()


async def merge_lanes(
    loops: list[AsyncIterator[IterationState]],
) -> AsyncIterator[IterationState]:
    """Stream states from several lanes as they arrive; cancel the rest on close or error.

    Each lane waits while its state is handled downstream (trackers, the user's
    loop body), exactly as a sequential run would, so ``set_next_config`` and
    ``stop`` called in the loop body take effect on that lane's next iteration.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(loop: AsyncIterator[IterationState]) -> None:
        try:
            async for state in loop:
                ack = asyncio.get_running_loop().create_future()
                await queue.put(("state", state, ack))
                await ack
        except Exception as exc:
            await queue.put(("error", exc, None))
        else:
            await queue.put(("done", None, None))

    tasks = [asyncio.ensure_future(pump(loop)) for loop in loops]
    remaining = len(tasks)
    try:
        while remaining:
            what, item, ack = await queue.get()
            if what == "error":
                raise item
            if what == "done":
                remaining -= 1
                continue
            try:
                yield item
            finally:
                if not ack.done():
                    ack.set_result(None)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in loops:
            await aclose(loop)
