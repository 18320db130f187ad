"""One map on Modal: a single streaming `starmap` over the generic entry, never one RPC per input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from mini.dispatch import Dispatch
from mini.errors import CallTimeoutError
from mini.modal_backend.entry import CallFailed
from mini.serialization import Call, Outcome

_END = object()


class ModalDispatch(Dispatch):
    def __init__(
        self,
        function: Any,
        *,
        ordered: bool,
        window: int,
        startup_timeout: float,
        abandon: Callable[[], Awaitable[None]],
    ) -> None:
        self._function = function
        # In order, Modal's next output always belongs to the oldest outstanding input, so even a platform
        # error (which names no input) is attributed exactly; out of order it can only be the best guess.
        self._ordered = ordered
        self._abandon = abandon
        self._window = window
        self._startup_timeout = startup_timeout
        self._inputs: asyncio.Queue[Any] = asyncio.Queue()
        self._outstanding: dict[int, None] = {}  # insertion-ordered: the oldest first
        self._ready: list[Outcome] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._any_result = False

    def capacity(self) -> int:
        return self._window

    def running(self) -> int:
        return len(self._outstanding)

    def submit(self, calls: Sequence[Call]) -> None:
        for call in calls:
            self._outstanding[call.index] = None
            self._inputs.put_nowait((call.index, call.payload))
        if self._task is None:
            self._task = asyncio.create_task(self._consume())

    def finish(self) -> None:
        self._inputs.put_nowait(_END)

    async def _stream(self) -> AsyncIterator[tuple[int, bytes]]:
        while (item := await self._inputs.get()) is not _END:
            yield item

    async def _consume(self) -> None:
        try:
            results = self._function.starmap.aio(
                self._stream(), order_outputs=self._ordered, return_exceptions=True
            )
            async with contextlib.aclosing(results):
                async for result in results:
                    self._any_result = True
                    self._deliver(self._outcome(result))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the whole map failed (app stopped, connection lost)
            self._fail_outstanding(error)

    def _outcome(self, result: Any) -> Outcome:
        if isinstance(result, tuple):
            index, data = result
            return Outcome(index, True, data)
        if isinstance(result, CallFailed):
            return Outcome(result.index, False, result.error)
        # A platform error (timeout, container crash) names no input: see `_ordered`.
        index = next(iter(self._outstanding), -1)
        return Outcome(index, False, _platform_error(index, result))

    def _deliver(self, outcome: Outcome) -> None:
        self._outstanding.pop(outcome.index, None)
        self._ready.append(outcome)
        self._arrived.set()

    def _fail_outstanding(self, error: BaseException) -> None:
        for index in list(self._outstanding):
            self._deliver(Outcome(index, False, error))

    async def outcomes(self) -> list[Outcome]:
        while not self._ready:
            self._arrived.clear()
            if self._any_result:
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait_for(self._arrived.wait(), self._startup_timeout)
            except asyncio.TimeoutError:
                self._fail_outstanding(
                    TimeoutError(
                        f"no call finished within startup_timeout={self._startup_timeout:g}s: the container "
                        "may be failing to start (an image error or a crash loop). Look at the image "
                        "build and container logs (run with progress=True to see them), or raise "
                        "startup_timeout for long first calls."
                    )
                )
        ready, self._ready = self._ready, []
        return ready

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._outstanding:
            # Modal's map does not cancel its remote inputs when the client stops reading: stopping the
            # function's app does, so that nothing keeps running (and billing) behind the user's back.
            self._outstanding.clear()
            await self._abandon()


def _platform_error(index: int, error: BaseException) -> BaseException:
    from modal.exception import FunctionTimeoutError

    if isinstance(error, FunctionTimeoutError):
        timeout = CallTimeoutError(f"call #{index} ran over its timeout on Modal and was stopped ({error}).")
        timeout.__cause__ = error
        return timeout
    return error
