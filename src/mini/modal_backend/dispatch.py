"""One map on Modal: its inputs go out in batches over one Modal function call, never one RPC per input.

The RPCs themselves are spoken by `mini.modal_backend._invocation`; this is the `Dispatch` the base drives.
Every outcome names the input it answers, so ordered and unordered maps alike attribute each failure
(including a timeout or a crashed container) to exactly its own input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mini.dispatch import CallEvent, Dispatch
from mini.errors import StartupTimeoutError
from mini.modal_backend._invocation import MapInvocation
from mini.serialization import Call, Outcome


class ModalDispatch(Dispatch):
    """`queue`: where the inputs' events go (see `mini.modal_backend.container`); `live`: read them from the
    start (someone watches); `stream`: the one call is a generator's."""

    def __init__(
        self,
        function: Any,
        *,
        window: int,
        startup_timeout: float,
        queue: Any = None,
        live: bool = False,
        stream: bool = False,
    ) -> None:
        self._home = asyncio.get_running_loop()
        self._invocation = MapInvocation(
            function,
            deliver=self._take,
            home=self._home,
            queue=queue,
            live=live,
            stream=stream,
        )
        self._window = window
        self._startup_timeout = startup_timeout
        self._live = live
        self._unsent: list[tuple[int, bytes]] = []
        self._finishing = False
        self._send_scheduled = False
        self._outstanding: set[int] = set()
        self._started: set[int] = set()  # outstanding inputs a container announced (when live)
        self._ready: list[Outcome | CallEvent] = []
        self._arrived = asyncio.Event()
        self._any_result = False

    def capacity(self) -> int:
        return self._window

    def running(self) -> int:
        # Watched, an input waiting for a container is queued until its container announces it; unwatched,
        # no announcement is read, and every outstanding input counts as running.
        return len(self._started) if self._live else len(self._outstanding)

    def submit(self, calls: Sequence[Call]) -> None:
        self._outstanding.update(call.index for call in calls)
        self._unsent.extend((call.index, call.payload) for call in calls)
        self._schedule_send()

    def finish(self) -> None:
        self._finishing = True
        self._schedule_send()

    def _schedule_send(self) -> None:
        # What is submitted in one turn of mini's loop crosses to modal's in one go, with the end of the
        # inputs when it follows them: a single call (`run`) is then known to be one before it starts.
        if not self._send_scheduled:
            self._send_scheduled = True
            self._home.call_soon(self._send)

    def _send(self) -> None:
        self._send_scheduled = False
        calls, self._unsent = self._unsent, []
        self._invocation.put(calls, last=self._finishing)

    def _take(self, arrived: list[Outcome | CallEvent]) -> None:
        # Only what concerns inputs still outstanding counts: one settled by a startup timeout stays settled.
        fresh = [item for item in arrived if item.index in self._outstanding]
        for item in fresh:
            if type(item) is not CallEvent:
                self._outstanding.discard(item.index)
                self._started.discard(item.index)
            elif item.kind == "started":
                self._started.add(item.index)
        if fresh:
            self._any_result = True  # an event too: its container has started
            self._ready.extend(fresh)
            self._arrived.set()

    async def outcomes(self) -> list[Outcome | CallEvent]:
        while not self._ready:
            self._arrived.clear()
            if self._any_result:
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait_for(self._arrived.wait(), self._startup_timeout)
            except asyncio.TimeoutError:
                self._fail_outstanding()
        ready, self._ready = self._ready, []
        return ready

    def _fail_outstanding(self) -> None:
        error = StartupTimeoutError(
            f"no call started or finished within startup_timeout={self._startup_timeout:g}s: the container "
            "may be failing to start (an image error, a crash loop, no free GPU). Look at the image build "
            "and container logs (run with progress=True to see them), or raise startup_timeout."
        )
        self._ready.extend(Outcome(index, False, error) for index in sorted(self._outstanding))
        self._outstanding.clear()
        self._started.clear()

    async def aclose(self) -> None:
        self._unsent.clear()  # never handed to Modal
        self._outstanding.clear()
        self._started.clear()
        await self._invocation.aclose()
