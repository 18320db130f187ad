"""Modal's map and call RPCs, spoken by mini: every outcome tied to exactly the input it answers.

Why not modal's public `Function.map`/`starmap`: it yields results without saying which input each one
answers, and a platform failure (a timeout, a crashed container) arrives as an exception that names no
input at all, so an unordered map cannot know which input failed. The outputs Modal's control plane sends
do carry the input's `idx`. Reading them means speaking the RPCs `modal.parallel_map` speaks (FunctionMap,
FunctionPutInputs, FunctionGetOutputs, FunctionRetryInputs, FunctionCallCancel) the way it speaks them,
with modal's own RPC retry policy, blob transfer and result decoding. Those are private names of `modal`,
imported from `mini.modal_backend._private` (which says what each stands in for), and the emulator tests
exercise each path, so an upgrade of the pinned `modal` that moves one fails there first.

It also lets mini do better than the public API: inputs are sent in full batches, arguments are pickled
once (mini's pickle of `(args, kwargs)` is the input Modal unpickles in the container), and a map's
outcomes cross from the modal client's event loop to mini's once per batch, not once per result.

Everything here runs on the modal client's event loop (synchronicity's thread); `MapInvocation`'s public
methods are the thread-safe doors from mini's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import queue as queue_module
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from grpclib import Status
from modal.exception import DeserializationError
from modal.exception import Error as ModalError

from mini.dispatch import CallEvent
from mini.errors import (
    BackendError,
    CallTimeoutError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerCrashed,
)
from mini.modal_backend._private import (
    ATTEMPT_TIMEOUT_GRACE_PERIOD,
    OUTPUTS_TIMEOUT,
    Retry,
    RetryManager,
    _Client,
    _Function,
    _stream_function_call_data,
    api_pb2,
    blob_download,
    blob_upload_with_results,
    deserialize,
    should_upload,
    synchronizer,
)
from mini.modal_backend.container import unpacked
from mini.modal_backend.entry import CallFailed
from mini.serialization import Outcome

# Inputs per FunctionPutInputs, as modal's own map sends them (the control plane's batch size).
CHUNK = 49
# Seconds between output polls while outputs come one by one and many inputs are waiting.
_GATHER_PAUSE = 0.01
_Result = api_pb2.GenericResult
# Never retried, whatever the policy says.
_TERMINAL = (_Result.GENERIC_STATUS_SUCCESS, _Result.GENERIC_STATUS_TERMINATED)
_PUT_RETRY = Retry(max_retries=None, max_delay=15, additional_status_codes=[Status.RESOURCE_EXHAUSTED])
_OUTPUTS_RETRY = Retry(max_retries=20, attempt_timeout=OUTPUTS_TIMEOUT + ATTEMPT_TIMEOUT_GRACE_PERIOD)

Deliver = Callable[[list[Outcome | CallEvent]], None]
T = TypeVar("T")


def client_loop() -> asyncio.AbstractEventLoop:
    """The event loop the modal client (its gRPC channels) lives on."""
    return synchronizer._get_loop(start=True)


def _raw(function: Any) -> _Function[Any, Any, Any]:
    """The implementation object behind a `modal.Function` (synchronicity's wrapper)."""
    return synchronizer._translate_in(function)


@dataclass
class _Input:
    index: int
    item: api_pb2.FunctionPutInputsItem
    jwt: str | None = None
    retries: RetryManager | None = None


class MapInvocation:
    """One map of `function` in flight on Modal. `put` is called from mini's loop; each batch of outcomes
    goes to `deliver`, called on mini's loop, in completion order.

    >>> invocation = MapInvocation(function, deliver=dispatch.take, home=asyncio.get_running_loop())
    >>> invocation.put([(0, payload)], last=True)
    >>> await invocation.aclose()        # stops what is outstanding on Modal
    """

    def __init__(
        self,
        function: Any,
        *,
        deliver: Deliver,
        home: asyncio.AbstractEventLoop,
        queue: Any = None,
        live: bool = False,
        stream: bool = False,
    ) -> None:
        self._function = _raw(function)
        self._deliver_home = deliver
        self._home = home
        self._loop = client_loop()
        self._stream = stream
        self._events = _EventReader(self, _raw(queue), live) if queue is not None else None
        self._pending: deque[tuple[int, bytes]] = deque()
        self._finished = False
        self._closed = False
        self._task: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        # On mini's loop: the inputs put whose outcome has not been handed over yet.
        self._unsettled: set[int] = set()
        self._all_put = False
        # Set on the client loop:
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._inputs: dict[int, _Input] = {}  # put and not settled, by idx (mini's index)
        self._unsent = 0
        self._call_id: str | None = None
        self._call_jwt = ""
        self._retry_policy: api_pb2.FunctionRetryPolicy | None = None
        self._client_retries = False
        self._retry_queue: asyncio.Queue[_Input] = asyncio.Queue()
        # Modal's input id -> idx of each input not settled yet, for the inputs' events; and back.
        self.by_input_id: dict[str, int] = {}
        self._input_ids: dict[int, str] = {}
        self.putting = 0  # requests in flight whose answer names inputs
        self._values_seen = 0  # of a generator call
        self._more_values = asyncio.Event()

    # ----- the doors from mini's loop ------------------------------------------------------------------

    def put(self, calls: Sequence[tuple[int, bytes]], last: bool = False) -> None:
        """Queue inputs `(index, payload)` (`last`: no more will follow); the first ones start the map."""
        self._unsettled.update(index for index, _ in calls)
        self._all_put = self._all_put or last
        self._loop.call_soon_threadsafe(self._accept, list(calls), last)

    async def aclose(self) -> None:
        """Stop every outstanding input on Modal (killing the containers running them); idempotent."""
        if not self._unsettled and self._all_put:
            # Nothing is left to stop: the client loop's side ends by itself once it has told Modal that
            # the outputs may go. Not crossing over to it saves a warm `run` a thread switch.
            return
        closing = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        if self._unsettled:
            await asyncio.wrap_future(closing)
        # Otherwise nothing is left to stop on Modal, only the RPC loops waiting for more inputs.

    def _arrived(self, items: list[Outcome | CallEvent]) -> None:
        # On mini's loop.
        self._unsettled.difference_update(item.index for item in items if type(item) is not CallEvent)
        self._deliver_home(items)

    # ----- on the client loop -------------------------------------------------------------------------

    def _accept(self, calls: list[tuple[int, bytes]], last: bool) -> None:
        if self._closed:
            return
        if self._failure is not None:  # the map's connection failed: so does every input put after
            self._deliver([Outcome(index, False, self._failure) for index, _ in calls])
            calls = []
        self._pending.extend(calls)
        self._unsent += len(calls)
        self._finished = self._finished or last
        if self._task is None and self._pending:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        self._check_done()

    def _check_done(self) -> None:
        holding = self._events is not None and self._events.holding
        if self._finished and not self._unsent and not self._inputs and not holding:
            self._done.set()

    async def _run(self) -> None:
        try:
            if self._stream:
                await self._single(stream=True)
            elif self._finished and len(self._pending) == 1:
                await self._single()
            else:
                await self._map()
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # the whole map failed: no outcome may be lost
            self._fail_outstanding(error)
        if self._events is not None:
            await self._done.wait()  # an outcome held for its input's events is handed on by the reader
            await self._events.stop()  # every outcome is out: no event can concern anyone any more

    def _name(self, index: int, input_id: str) -> None:
        self.by_input_id[input_id] = index
        self._input_ids[index] = input_id

    def _deliver(self, outcomes: Sequence[Outcome | CallEvent]) -> None:
        for outcome in outcomes:
            if type(outcome) is not CallEvent:  # settled: its later events concern no one
                self.by_input_id.pop(self._input_ids.pop(outcome.index, ""), None)
        if outcomes:
            self._home.call_soon_threadsafe(self._arrived, list(outcomes))

    def _settle_all(self, decoded: list[tuple[Outcome, int]]) -> None:
        """Hand settled outcomes on, each once the events its input sent before it are in."""
        if self._events is None:
            self._deliver([outcome for outcome, _ in decoded])
        else:
            self._deliver(self._events.release([(outcome, events) for outcome, events in decoded]))

    def _fail_outstanding(self, error: BaseException) -> None:
        self._failure = failure = _whole_map_error(error)
        indices = [entry.index for entry in self._inputs.values()] + [index for index, _ in self._pending]
        self._inputs.clear()
        self._pending.clear()
        self._unsent = 0
        self._deliver([Outcome(index, False, failure) for index in indices])
        self._check_done()

    async def _item(
        self, index: int, payload: bytes, invocation_type: api_pb2.FunctionCallInvocationType.ValueType
    ) -> api_pb2.FunctionPutInputsItem:
        function = self._function
        # mini's pickle of (args, kwargs) is the input: the container's modal runtime unpickles it.
        data_format = api_pb2.DATA_FORMAT_PICKLE
        method = function._use_method_name
        if not should_upload(
            len(payload),
            function._max_object_size_bytes,
            function._max_async_object_size_bytes,
            invocation_type,
        ):
            inline = api_pb2.FunctionInput(args=payload, data_format=data_format, method_name=method)
            return api_pb2.FunctionPutInputsItem(idx=index, input=inline)
        blob_id, uploads = await blob_upload_with_results(payload, function.client._stub)
        return api_pb2.FunctionPutInputsItem(
            idx=index,
            input=api_pb2.FunctionInput(args_blob_id=blob_id, data_format=data_format, method_name=method),
            blob_upload_results=uploads,
        )

    @property
    def _started_call_id(self) -> str:
        """The function call's id, once FunctionMap has answered (nothing that sends it runs before)."""
        assert self._call_id is not None, "FunctionMap has not answered yet"
        return self._call_id

    # ----- a map --------------------------------------------------------------------------------------

    async def _map(self) -> None:
        stub = self._function.client._stub
        response = await stub.FunctionMap(
            api_pb2.FunctionMapRequest(
                function_id=self._function.object_id,
                function_call_type=api_pb2.FUNCTION_CALL_TYPE_MAP,
                return_exceptions=True,
                function_call_invocation_type=api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC,
            )
        )
        self._call_id = response.function_call_id
        self._call_jwt = response.function_call_jwt
        self._retry_policy = response.retry_policy
        self._client_retries = response.sync_client_retries_enabled
        if self._events is not None:
            self._events.follow(self._call_id)
        pumps = [self._pump_inputs(), self._pump_outputs()]
        if self._client_retries:
            pumps.append(self._pump_retries())
        tasks = [asyncio.ensure_future(pump) for pump in [self._done.wait(), *pumps]]
        try:
            # The pumps run until cancelled: the first task to end is the map's end, or a pump's failure.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._acknowledge()

    def _ready_to_send(self) -> bool:
        # Full batches, unless the map is starved: fewer RPCs, and containers never wait for inputs.
        if not self._pending:
            return False
        waiting = len(self._inputs)
        return len(self._pending) >= CHUNK or self._finished or waiting < CHUNK

    async def _pump_inputs(self) -> None:
        stub = self._function.client._stub
        sync = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
        while True:
            while not self._ready_to_send():
                self._wake.clear()
                await self._wake.wait()
            batch = [self._pending.popleft() for _ in range(min(CHUNK, len(self._pending)))]
            items = [await self._item(index, payload, sync) for index, payload in batch]
            for item in items:
                self._inputs[item.idx] = _Input(item.idx, item, retries=self._retry_manager())
            self._unsent -= len(batch)
            self.putting += 1
            try:
                response = await stub.FunctionPutInputs(
                    api_pb2.FunctionPutInputsRequest(
                        function_id=self._function.object_id,
                        function_call_id=self._started_call_id,
                        inputs=items,
                    ),
                    retry=_PUT_RETRY,
                )
            finally:
                self.putting -= 1
            for answer in response.inputs:
                if answer.idx in self._inputs or (
                    self._events is not None and self._events.holds(answer.idx)
                ):
                    self._name(answer.idx, answer.input_id)  # else it settled (without events) meanwhile
                entry = self._inputs.get(answer.idx)
                if entry is not None:
                    entry.jwt = answer.input_jwt
            self._wake.set()  # an output may be waiting for this input's jwt

    def _retry_manager(self) -> RetryManager | None:
        if not self._client_retries or self._retry_policy is None:
            return None
        return RetryManager(self._retry_policy)

    async def _pump_outputs(self) -> None:
        stub = self._function.client._stub
        cursor = "0-0"
        while True:
            response = await stub.FunctionGetOutputs(
                api_pb2.FunctionGetOutputsRequest(
                    function_call_id=self._started_call_id,
                    timeout=OUTPUTS_TIMEOUT,
                    last_entry_id=cursor,
                    clear_on_success=False,
                    requested_at=time.time(),
                    input_jwts=[entry.jwt for entry in self._inputs.values() if entry.jwt],
                ),
                retry=_OUTPUTS_RETRY,
            )
            cursor = response.last_entry_id
            decoded = []
            for output in response.outputs:
                entry = self._inputs.get(output.idx)
                if entry is None or not self._is_final(entry, output):
                    continue
                del self._inputs[output.idx]
                result = output.result
                inline = result.WhichOneof("data_oneof") == "data"
                if result.status == _Result.GENERIC_STATUS_SUCCESS and inline:
                    # The common case, decoded here rather than through a coroutine per output.
                    decoded.append(success(output.idx, result.data))
                else:
                    decoded.append(await decode_output(output, self._function.client))
            self._settle_all(decoded)
            self._check_done()
            if len(response.outputs) < CHUNK and len(self._inputs) > CHUNK:
                # Outputs trickle in while many inputs run: wait a little so that the next poll brings
                # several. Each poll carries every waiting input's jwt, so this saves bytes as well as
                # RPCs, and delays no output by more than the pause.
                await asyncio.sleep(_GATHER_PAUSE)

    def _is_final(self, entry: _Input, output: api_pb2.FunctionGetOutputsItem) -> bool:
        """Whether `output` settles its input: not an earlier attempt's, and no client-side retry is due
        (Modal leaves retries to the client when FunctionMap says `sync_client_retries_enabled`)."""
        retries = entry.retries
        if retries is None:
            return True
        if output.retry_count != retries.retry_count:
            return False
        status = output.result.status
        if status in _TERMINAL:
            return True
        delay_ms = retries.get_delay_ms()  # counts the attempt, as modal's map does
        if delay_ms is None:
            return True
        if status == _Result.GENERIC_STATUS_INTERNAL_FAILURE:
            delay_ms = 0  # Modal's own failure: retried at once
        self._loop.call_later(delay_ms / 1000, self._retry_queue.put_nowait, entry)
        return False

    async def _pump_retries(self) -> None:
        stub = self._function.client._stub
        while True:
            entries = [await self._retry_queue.get()]
            while not self._retry_queue.empty() and len(entries) < CHUNK:
                entries.append(self._retry_queue.get_nowait())
            entries = [entry for entry in entries if entry.index in self._inputs]
            if not entries:
                continue
            response = await stub.FunctionRetryInputs(
                api_pb2.FunctionRetryInputsRequest(
                    function_call_jwt=self._call_jwt,
                    inputs=[
                        api_pb2.FunctionRetryInputsItem(
                            input_jwt=entry.jwt or "",
                            input=entry.item.input,
                            retry_count=entry.retries.retry_count if entry.retries else 0,
                        )
                        for entry in entries
                    ],
                ),
                retry=_PUT_RETRY,
            )
            for entry, jwt in zip(entries, response.input_jwts, strict=False):
                entry.jwt = jwt

    async def _acknowledge(self) -> None:
        # As modal's map does: tell the control plane it may drop this call's outputs.
        with contextlib.suppress(Exception):
            await self._function.client._stub.FunctionGetOutputs(
                api_pb2.FunctionGetOutputsRequest(
                    function_call_id=self._started_call_id,
                    timeout=0,
                    last_entry_id="0-0",
                    clear_on_success=True,
                    requested_at=time.time(),
                )
            )

    # ----- a single call ------------------------------------------------------------------------------

    async def _single(self, stream: bool = False) -> None:
        """One input, as modal's `.remote` sends it: FunctionMap carries the input, and one long poll
        fetches (and clears) its output: two RPCs for a warm call. A generator's values (`stream`) are
        read from the call's data-out stream meanwhile, as modal's `remote_gen` reads them."""
        index, payload = self._pending.popleft()
        self._unsent -= 1
        stub = self._function.client._stub
        sync = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
        item = await self._item(index, payload, sync)
        entry = self._inputs[index] = _Input(index, item)
        response = await stub.FunctionMap(
            api_pb2.FunctionMapRequest(
                function_id=self._function.object_id,
                function_call_type=api_pb2.FUNCTION_CALL_TYPE_UNARY,
                pipelined_inputs=[item],
                function_call_invocation_type=sync,
            )
        )
        self._call_id = response.function_call_id
        if self._events is not None:
            self._events.follow(self._call_id)
        if response.pipelined_inputs:
            entry.jwt = response.pipelined_inputs[0].input_jwt
            self._name(index, response.pipelined_inputs[0].input_id)
        else:
            self.putting += 1
            try:
                put = await stub.FunctionPutInputs(
                    api_pb2.FunctionPutInputsRequest(
                        function_id=self._function.object_id,
                        function_call_id=self._started_call_id,
                        inputs=[item],
                    ),
                    retry=_PUT_RETRY,
                )
            finally:
                self.putting -= 1
            entry.jwt = put.inputs[0].input_jwt
            self._name(index, put.inputs[0].input_id)
        values = asyncio.ensure_future(self._read_values(index)) if stream else None
        try:
            await self._single_settle(index, item, entry, response, values)
        finally:
            if values is not None and not values.done():
                values.cancel()
                await asyncio.gather(values, return_exceptions=True)

    async def _single_settle(
        self,
        index: int,
        item: api_pb2.FunctionPutInputsItem,
        entry: _Input,
        response: api_pb2.FunctionMapResponse,
        values: asyncio.Future[None] | None,
    ) -> None:
        stub = self._function.client._stub
        policy = response.retry_policy
        retrying = response.sync_client_retries_enabled and policy.retries > 0
        budget = RetryManager(policy) if retrying else None
        while True:
            output = await self._single_output(index, entry.jwt)
            status = output.result.status
            if budget is None or status in _TERMINAL:
                break
            if status != _Result.GENERIC_STATUS_INTERNAL_FAILURE:
                delay_ms = budget.get_delay_ms()
                if delay_ms is None:
                    break
                await asyncio.sleep(delay_ms / 1000)
            await stub.FunctionRetryInputs(
                api_pb2.FunctionRetryInputsRequest(
                    function_call_jwt=response.function_call_jwt,
                    inputs=[api_pb2.FunctionRetryInputsItem(input_jwt=entry.jwt or "", input=item.input)],
                ),
                retry=_PUT_RETRY,
            )
        self._inputs.pop(index, None)
        if values is not None and output.result.status == _Result.GENERIC_STATUS_SUCCESS:
            # A generator's final output says how many values it yielded: all of them come before it ends.
            done = api_pb2.GeneratorDone.FromString(output.result.data)
            while self._values_seen < done.items_total and not values.done():
                self._more_values.clear()
                await self._more_values.wait()
            self._settle_all([(Outcome(index, True, pickle.dumps(None)), 0)])
        else:
            self._settle_all([await decode_output(output, self._function.client)])
        self._check_done()

    async def _read_values(self, index: int) -> None:
        """Pass a generator call's values on as they come (counted in `_values_seen`)."""
        async for message in _stream_function_call_data(
            self._function.client, None, self._call_id, "data_out"
        ):
            if isinstance(message, api_pb2.GeneratorDone):
                return
            self._values_seen += 1
            self._deliver([CallEvent(index, "item", message)])
            self._more_values.set()

    async def _single_output(self, index: int, jwt: str | None) -> api_pb2.FunctionGetOutputsItem:
        stub = self._function.client._stub
        while True:
            response = await stub.FunctionGetOutputs(
                api_pb2.FunctionGetOutputsRequest(
                    function_call_id=self._started_call_id,
                    timeout=OUTPUTS_TIMEOUT,
                    last_entry_id="0-0",
                    clear_on_success=True,
                    requested_at=time.time(),
                    input_jwts=[jwt] if jwt else None,
                    start_idx=index,
                    end_idx=index,
                ),
                retry=_OUTPUTS_RETRY,
            )
            if response.outputs:
                return response.outputs[0]

    # ----- stopping -----------------------------------------------------------------------------------

    async def _close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            if not self._done.is_set():
                task.cancel()  # otherwise it is only telling Modal that the call's outputs may go
            await asyncio.gather(task, return_exceptions=True)
        if self._events is not None:
            await self._events.stop()
        unsettled, self._inputs = self._inputs, {}
        self._pending.clear()
        if unsettled and self._call_id is not None:
            # Modal keeps running a call's inputs when the client stops reading; cancelling the call stops
            # them, and terminating their containers makes sure nothing keeps running (and billing).
            with contextlib.suppress(Exception):
                await self._function.client._stub.FunctionCallCancel(
                    api_pb2.FunctionCallCancelRequest(
                        function_call_id=self._call_id, terminate_containers=True
                    )
                )


class _EventReader:
    """The events of one map's inputs (reports, printed lines, starts), read from the session's queue, in
    the map's own partition (its function call id). It reads only when someone may be watching: at once
    when the caller asked for reports or a display (`live`), else once an input has run for a while or an
    output says its input had events. An output is held until its input's events are in."""

    LATE = 1.0  # seconds an input may run before its events are fetched unasked
    PATIENCE = 10.0  # seconds an output waits for events that never come (a lost queue write)

    def __init__(self, invocation: MapInvocation, queue: Any, live: bool) -> None:
        self._invocation = invocation
        self._queue = queue
        self._live = live
        self._partition: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._received: dict[int, int] = {}
        self._held: dict[int, tuple[Outcome, int, float]] = {}
        self._early: list[tuple[str, str, Any]] = []  # events of inputs whose id is not known yet

    def follow(self, partition: str) -> None:
        self._partition = partition
        if self._live:
            self._start()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.LATE, self._start)

    def _start(self) -> None:
        if self._reader is None and self._partition is not None:
            self._reader = asyncio.ensure_future(self._read())

    @property
    def holding(self) -> bool:
        """Whether an outcome waits here for its input's events."""
        return bool(self._held)

    def holds(self, index: int) -> bool:
        """Whether input `index`'s outcome waits here for its events."""
        return index in self._held

    def release(self, settled: list[tuple[Outcome, int]]) -> list[Outcome | CallEvent]:
        ready: list[Outcome | CallEvent] = []
        now = time.monotonic()
        for outcome, events in settled:
            if events <= self._received.get(outcome.index, 0):
                self._received.pop(outcome.index, None)
                ready.append(outcome)
            else:
                self._held[outcome.index] = (outcome, events, now)
                self._start()
        return ready

    async def _read(self) -> None:
        invocation = self._invocation
        while True:
            try:
                items = await self._queue.get_many(1000, timeout=self.PATIENCE / 2, partition=self._partition)
            except queue_module.Empty:
                items = []
            arrived: list[Outcome | CallEvent] = []
            unpacked_items = [event for item in items for event in unpacked(item)]
            events, self._early = [*self._early, *unpacked_items], []
            for input_id, kind, data in events:
                index = invocation.by_input_id.get(input_id)
                if index is None:
                    # Its id comes with an answer still awaited; otherwise its input has settled.
                    if invocation.putting:
                        self._early.append((input_id, kind, data))
                    continue
                self._received[index] = self._received.get(index, 0) + 1
                arrived.append(CallEvent(index, kind, data))
            arrived.extend(self._due())
            invocation._deliver(arrived)
            invocation._check_done()  # the last outcomes may have waited for their events here

    def _due(self) -> list[Outcome]:
        now = time.monotonic()
        due = [
            index
            for index, (_, events, since) in self._held.items()
            if self._received.get(index, 0) >= events or now - since > self.PATIENCE
        ]
        for index in due:
            self._received.pop(index, None)
        return [self._held.pop(index)[0] for index in due]

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def decode_output(output: api_pb2.FunctionGetOutputsItem, client: _Client) -> tuple[Outcome, int]:
    """The mini outcome of a final output of a generic entry (see `mini.modal_backend.entry`), and how many
    events the input had sent before it."""
    index, result = output.idx, output.result
    if result.WhichOneof("data_oneof") == "data_blob_id":
        data = await blob_download(result.data_blob_id, client._stub)
    else:
        data = result.data
    if result.status == _Result.GENERIC_STATUS_SUCCESS:
        return success(index, data)
    error, events = failure(index, result, data, client)
    return Outcome(index, False, error), events


def success(index: int, data: bytes) -> tuple[Outcome, int]:
    """A successful output: the entry returned mini's pickle of the result (which Modal's pickle of those
    bytes wraps), or `(events, pickle)` when the input had events."""
    value = pickle.loads(data)
    if type(value) is tuple:
        events, value = value
        return Outcome(index, True, value), events
    return Outcome(index, True, value), 0


def failure(
    index: int, result: api_pb2.GenericResult, data: bytes, client: _Client | None = None
) -> tuple[bytes | BaseException, int]:
    """What a failed output means for call `index`: the user's error as the entry encoded it, or a mini
    error for Modal's own failures, with Modal's exception as its cause; and how many events the input had
    sent before it failed."""
    status = result.status
    if status == _Result.GENERIC_STATUS_TIMEOUT:
        message = f"call #{index} ran over its timeout on Modal and was stopped ({result.exception})."
        return _caused(CallTimeoutError(message), result), 0
    if data and status in (_Result.GENERIC_STATUS_FAILURE, _Result.GENERIC_STATUS_INIT_FAILURE):
        return _raised(index, result, data, client)
    if status in _OUT_OF_MEMORY:
        what = "ran out of memory and was killed"
    elif status == _Result.GENERIC_STATUS_TERMINATED:
        what = "was stopped by Modal (its call was cancelled or its app stopped)"
    elif status == _Result.GENERIC_STATUS_INTERNAL_FAILURE:
        what = "was lost to a failure inside Modal"
    else:
        what = "died before returning a result (it exited, was killed by a signal or ran out of memory)"
    detail = result.exception or "no detail from Modal"
    return _caused(WorkerCrashed(f"the container running call #{index} {what}: {detail}."), result), 0


_OUT_OF_MEMORY = (
    _Result.GENERIC_STATUS_KERNEL_OOM_KILL,
    _Result.GENERIC_STATUS_MEMORY_MANAGER_EVICTION,
    _Result.GENERIC_STATUS_MEMORY_THRASHING_EVICTION,
)


def _raised(
    index: int, result: api_pb2.GenericResult, data: bytes, client: _Client | None
) -> tuple[bytes | BaseException, int]:
    """A failure that carries a pickled exception: the entry's `CallFailed`, or one raised by Modal's
    container runtime (arguments that cannot be unpickled there, sources that cannot be imported)."""
    try:
        raised = deserialize(data, client)
    except Exception as unreadable:
        message = f"call #{index} failed on Modal with an error that cannot be rebuilt here ({unreadable})"
        raised = RemoteError("unknown", message)
    if isinstance(raised, CallFailed):
        return raised.error, raised.events
    if isinstance(raised, DeserializationError):
        error: BaseException = SerializationError(
            f"the arguments of call #{index} cannot be unpickled in the container ({raised}). Ship the "
            "modules their types come from under src/, or pass plain data."
        )
    elif isinstance(raised, ModalError):
        error = RemoteError(type(raised).__name__, f"call #{index} failed on Modal: {raised}")
    else:
        error = raised  # a Python error of the container's, such as an import that failed at start-up
    error.__cause__ = RemoteTraceback(result.traceback or result.exception)
    return error, 0


def _caused(error: BaseException, result: api_pb2.GenericResult) -> BaseException:
    from modal.exception import FunctionTimeoutError, InternalFailure
    from modal.exception import RemoteError as ModalRemoteError

    cause = {
        _Result.GENERIC_STATUS_TIMEOUT: FunctionTimeoutError,
        _Result.GENERIC_STATUS_INTERNAL_FAILURE: InternalFailure,
    }.get(result.status, ModalRemoteError)
    error.__cause__ = cause(result.exception)
    return error


def _whole_map_error(error: BaseException) -> BaseException:
    if isinstance(error, BackendError):
        return error
    wrapped = BackendError(
        f"the map's connection to Modal failed ({type(error).__name__}: {error}); its unfinished calls "
        "did not complete. Check `mini doctor`, then run them again."
    )
    wrapped.__cause__ = error
    return wrapped


# ----- detached calls ---------------------------------------------------------------------------------


async def on_client_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` on the modal client's loop from mini's."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, client_loop()))


async def spawn_input(function: Any, payload: bytes) -> str:
    """Start one detached call of `function` on mini's pickled `(args, kwargs)`, as `Function.spawn`
    does; return its function-call id. Runs on the client loop."""
    raw = _raw(function)
    stub = raw.client._stub
    invocation_type = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC
    limits = (raw._max_object_size_bytes, raw._max_async_object_size_bytes)
    if should_upload(len(payload), *limits, invocation_type):
        blob_id, uploads = await blob_upload_with_results(payload, stub)
        put = api_pb2.FunctionInput(args_blob_id=blob_id, data_format=api_pb2.DATA_FORMAT_PICKLE)
        item = api_pb2.FunctionPutInputsItem(idx=0, input=put, blob_upload_results=uploads)
    else:
        put = api_pb2.FunctionInput(args=payload, data_format=api_pb2.DATA_FORMAT_PICKLE)
        item = api_pb2.FunctionPutInputsItem(idx=0, input=put)
    item.input.method_name = raw._use_method_name
    response = await stub.FunctionMap(
        api_pb2.FunctionMapRequest(
            function_id=raw.object_id,
            function_call_type=api_pb2.FUNCTION_CALL_TYPE_UNARY,
            pipelined_inputs=[item],
            function_call_invocation_type=invocation_type,
        )
    )
    if not response.pipelined_inputs:
        await stub.FunctionPutInputs(
            api_pb2.FunctionPutInputsRequest(
                function_id=raw.object_id, function_call_id=response.function_call_id, inputs=[item]
            ),
            retry=_PUT_RETRY,
        )
    return response.function_call_id


class OutputExpired(Exception):
    """Modal no longer holds the call's output (it keeps outputs for a limited time)."""


async def poll_call(call_id: str, index: int) -> Outcome | None:
    """The outcome of detached call `call_id` (mini's call `index`), or None while it runs; one RPC.
    Runs on the client loop."""
    client = await _Client.from_env()
    response = await client._stub.FunctionGetOutputs(
        api_pb2.FunctionGetOutputsRequest(
            function_call_id=call_id,
            timeout=0,
            last_entry_id="0-0",
            clear_on_success=False,
            requested_at=time.time(),
            start_idx=0,
            end_idx=0,
        ),
        retry=Retry(attempt_timeout=ATTEMPT_TIMEOUT_GRACE_PERIOD),
    )
    if not response.outputs:
        if response.num_unfinished_inputs == 0:
            raise OutputExpired(call_id)
        return None
    output = response.outputs[0]
    output.idx = index
    return (await decode_output(output, client))[0]
