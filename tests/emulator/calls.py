"""Function calls as the control plane keeps them: inputs in, outputs out, a generator's data out.

    call = FunctionCall("fc-1", function_id="fu-1", invocation_type=SYNC)
    item = call.add_input(idx=0, input=api_pb2.FunctionInput(args=b"...", data_format=PICKLE))
    call.add_output(item, api_pb2.FunctionGetOutputsItem(input_id=item.input_id, idx=0, result=...))
    outputs, cursor = await call.wait_outputs(after_entry=0, timeout=55, max_bytes=16 << 20)
    chunks = await call.wait_data_out(after=0, timeout=55)    # what a generator yielded so far

Outputs are kept in arrival order; their position (1-based) is the entry id modal's cursor
(`last_entry_id`, written "N-0" like a Redis stream id) points at.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from modal_proto import api_pb2

from tests.emulator.ids import new_id


@dataclass
class Input:
    """One input of a call; `done` once its final output is recorded, `attempt` the one running it."""

    input_id: str
    idx: int
    input: api_pb2.FunctionInput
    done: bool = False
    retry_count: int = 0  # the attempt a client-side retry asked for (FunctionRetryInputs)
    attempt: Any = None
    enqueued_at: float = field(default_factory=time.time)

    @property
    def data_format(self) -> int:
        return self.input.data_format


@dataclass
class FunctionCall:
    function_call_id: str
    function_id: str
    invocation_type: int
    client_retries: bool = False
    cancelled: bool = False
    inputs: list[Input] = field(default_factory=list)
    outputs: list[api_pb2.FunctionGetOutputsItem] = field(default_factory=list)
    data_out: list[api_pb2.DataChunk] = field(default_factory=list)
    data_out_readers: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _popped: set[int] = field(default_factory=set)  # ids of outputs a `clear_on_success` poll took

    def add_input(self, idx: int, input: api_pb2.FunctionInput) -> Input:
        item = Input(input_id=new_id("in"), idx=idx, input=input)
        self.inputs.append(item)
        self._notify()
        return item

    def add_output(self, item: Input, output: api_pb2.FunctionGetOutputsItem) -> None:
        if item.done:
            return
        item.done = True
        self.outputs.append(output)
        self._notify()

    def add_data_out(self, chunks: list[api_pb2.DataChunk]) -> None:
        self.data_out.extend(chunks)
        self._notify()

    def reopen(self, item: Input, retry_count: int) -> None:
        """Take `item` back for another attempt that a client asked for."""
        item.done = False
        item.retry_count = retry_count
        self._notify()

    def input(self, input_id: str) -> Input:
        return next(item for item in self.inputs if item.input_id == input_id)

    @property
    def num_unfinished(self) -> int:
        return sum(1 for item in self.inputs if not item.done)

    async def wait_outputs(
        self, *, after_entry: int, timeout: float, max_bytes: int
    ) -> tuple[list[api_pb2.FunctionGetOutputsItem], int]:
        """Outputs after cursor `after_entry` (about `max_bytes` of them at most, always at least one),
        waiting up to `timeout` seconds for one; and the cursor after them."""
        await self._wait_until(lambda: len(self.outputs) > after_entry, timeout)
        page: list[api_pb2.FunctionGetOutputsItem] = []
        size = 0
        for output in self.outputs[after_entry:]:
            if page and size + output.ByteSize() > max_bytes:
                break
            page.append(output)
            size += output.ByteSize()
        return page, after_entry + len(page)

    async def wait_indices(
        self, start: int, end: int, timeout: float, *, clear: bool = False
    ) -> list[api_pb2.FunctionGetOutputsItem]:
        """Outputs of inputs `start..end` (inclusive), waiting up to `timeout` seconds for at least one.

        With `clear` they are popped, as for a call's `.remote()` (`clear_on_success`): after a client
        retries the input, the next poll waits for the new attempt's output, not the old one's.
        """

        def matching() -> list[api_pb2.FunctionGetOutputsItem]:
            return [
                output
                for output in self.outputs
                if start <= output.idx <= end and id(output) not in self._popped
            ]

        await self._wait_until(lambda: bool(matching()), timeout)
        found = matching()
        if clear:
            self._popped.update(id(output) for output in found)
        return found

    async def wait_data_out(self, *, after: int, timeout: float) -> list[api_pb2.DataChunk]:
        """Data chunks past position `after` of the data-out stream, waiting up to `timeout` for one."""
        await self._wait_until(lambda: len(self.data_out) > after, timeout)
        return self.data_out[after:]

    async def _wait_until(self, condition, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0)
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _notify(self) -> None:
        self._changed.set()


def parse_entry_id(entry_id: str) -> int:
    """The cursor position in an entry id such as "12-0"; empty or malformed ids mean the start."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def format_entry_id(position: int) -> str:
    return f"{position}-0"
