"""Detached runs on Modal: calls spawned in a detached app, looked up later by their function-call ids.

`ModalLauncher` lives in the process that calls `spawn`/`spawn_map`: it builds the image as any dispatch
does, starts a detached app holding the generic entry, spawns one Modal function call per mini call, and
disconnects; the app and its calls go on without this process. `ModalMonitor` is loaded later, in any
process on the checkout, from the run record alone: it looks calls up by id, never builds or creates
anything, and stores an outcome in the run folder as soon as it sees one, since Modal keeps results for
7 days only.

>>> run = ModalApparatus("sweep").w(gpu="A100").spawn_map(train, configs)   # returns once all are spawned
>>> Run.open(run.id).status()                                               # later, from any shell
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from mini import _loop
from mini.modal_backend.auth import token_error
from mini.modal_backend.options import DEFAULT_MAX_CONTAINERS, DEFAULT_TIMEOUT
from mini.modal_backend.session import readable_name, run_app
from mini.project import atomic_write
from mini.runs.errors import RunError
from mini.runs.launcher import Launcher
from mini.runs.monitor import Monitor
from mini.runs.state import CallState

if TYPE_CHECKING:
    from mini.modal_backend.session import Session
    from mini.options import Options
    from mini.runs.registry import CallRecord, RunFolder
    from mini.serialization import Call, Outcome

_APP_FILE = "modal.json"  # the run's detached app and function, for people looking for its logs
_CALL_ID_FILE = "modal_call_id"  # per call, written as soon as it is spawned (see `_note_spawned`)
_SPAWNS_IN_FLIGHT = 32  # spawn RPCs at once: a large sweep is handed over quickly without a burst of 1000


class ModalLauncher(Launcher):
    """Spawns a run's calls in a detached Modal app of their own, which outlives this process. One per
    launch, made by `ModalApparatus` for `spawn` and `spawn_map`:

    >>> job = ModalApparatus("sweep").w(gpu="A100").spawn(train, lr=1e-3)   # the launcher runs in here
    """

    backend = "modal"
    monitor = "mini.modal_backend.runs:ModalMonitor"

    def __init__(self, session: Session, name: str, options: Options) -> None:
        self._session = session
        self._name = name
        self._options = options

    def settings(self) -> dict[str, Any]:
        options = self._options
        return {
            "app": f"mini-{self._name}",
            "gpu": options.gpu,
            "cpu": options.cpu,
            "memory": options.memory,
            "region": options.region,
            "timeout": options.timeout or DEFAULT_TIMEOUT,
            "retries": options.retries or 0,
            "max_containers": options.max_containers or DEFAULT_MAX_CONTAINERS,
        }

    def relaunch(self) -> tuple[dict[str, Any], Options]:
        return {}, self._options

    def image_hash(self) -> str | None:
        if self._options.image is not None:
            return None  # the user's own image: the spec's hash would not describe it
        return _loop.wait(self._session.image_spec()).image_hash

    def launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str | None]:
        return _loop.wait(self._launch(run, fn_blob, calls))

    async def _launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str | None]:
        # The record names the function `module:qualname`; the dashboard shows its last part, as for a map.
        base = run.record().function.rpartition(":")[2].rpartition(".")[2]
        name = readable_name(base, fn_blob, self._options)
        app, function = await self._session.new_app(name, fn_blob, self._options)
        async with contextlib.AsyncExitStack() as stack:
            await run_app(app, self._options, stack, detach=True)
            self._session.announce(name, self._options)
            where = {"app_id": app.app_id, "function": name, "function_id": function.object_id}
            run.write_file(_APP_FILE, json.dumps(where).encode())
            return await _spawn_all(function, calls, functools.partial(_note_spawned, run))
        # Leaving the block disconnects this client; a detached app keeps running until its calls end.


async def _spawn_all(
    function: Any, calls: Sequence[Call], on_spawned: Callable[[int, str], None]
) -> list[str | None]:
    """Spawn every call, a bounded number at once, telling `on_spawned` of each.

    If one spawn fails or the launch is interrupted, no more are sent, and those in flight are let finish,
    so that every call Modal started has its id noted and is cancelled with the rest of the run (by
    `mini.runs.launch`, through `ModalMonitor`): a failed launch leaves nothing running.
    """
    if not calls:
        return []
    limit = asyncio.Semaphore(_SPAWNS_IN_FLIGHT)
    sent: set[asyncio.Task[Any]] = set()

    async def spawn(call: Call) -> str:
        from mini.modal_backend._invocation import on_client_loop, spawn_input

        async with limit:
            sent.add(asyncio.current_task())  # type: ignore[arg-type]
            call_id = await on_client_loop(spawn_input(function, call.payload))
            on_spawned(call.index, call_id)
            return call_id

    tasks = [asyncio.ensure_future(spawn(call)) for call in calls]
    try:
        # `wait`, not `gather`: an interrupted gather would cancel the spawns in flight, whose calls Modal
        # may have started already, under ids this process would then never learn.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        return [task.result() for task in tasks]
    except BaseException:
        for task in tasks:
            if task not in sent:
                task.cancel()
        await asyncio.wait(tasks)
        raise


def _note_spawned(run: RunFolder, index: int, call_id: str) -> None:
    # The record gets every id once all are spawned; until then, this file lets any process find (and
    # cancel) a call whose launcher was killed mid-launch. Not synced to disk, so that a sweep of thousands
    # is not slowed down: it has to survive the process, not a power cut.
    atomic_write(run.call_dir(index) / _CALL_ID_FILE, call_id.encode(), durable=False)


class ModalMonitor(Monitor):
    """Answers for a Modal run's calls by their function-call ids: for one call, one status request; for a
    whole run, one listing of the run's function (`mini.modal_backend.call_index`), then one request per
    call that has finished since the last look.

    An unfinished call is `running` from the moment it was spawned; the detail says whether Modal has it
    queued or running.
    """

    def backend_id(self, run: RunFolder, call: CallRecord) -> str | None:
        if call.backend_id is not None:
            return call.backend_id
        try:
            return (run.call_dir(call.index) / _CALL_ID_FILE).read_text() or None
        except FileNotFoundError:
            return None

    def state(self, run: RunFolder, call: CallRecord) -> CallState:
        call_id = self.backend_id(run, call)
        if call_id is None:
            return CallState("pending", "being handed over to Modal")
        return _loop.wait(self._state(run, call, call_id))

    async def _state(self, run: RunFolder, call: CallRecord, call_id: str) -> CallState:
        from mini.tls import ensure_grpc_trusts_system_ca

        ensure_grpc_trusts_system_ca()  # before modal opens its first connection
        from mini.modal_backend._invocation import OutputExpired, on_client_loop, poll_call

        try:
            async with _asking_modal(call_id):
                outcome = await on_client_loop(poll_call(call_id, call.index))
        except OutputExpired:
            return _EXPIRED
        if outcome is None:
            return CallState("running", "on Modal, queued or running")
        return _settled(run, call, outcome)

    def states(self, run: RunFolder, calls: Sequence[CallRecord]) -> list[CallState]:
        asked = [(call, self.backend_id(run, call)) for call in calls]
        known = [(call, call_id) for call, call_id in asked if call_id is not None]
        answers, finished = _loop.wait(self._states(run, known)) if known else ({}, [])
        # Stored here, off mini's loop, in one batch: a look at a large run that has just finished stores
        # thousands of outcomes, two syncs to disk in all.
        outcomes = [_encoded(call, outcome) for call, outcome in finished]
        for outcome, summary in zip(outcomes, run.store_outcomes(outcomes), strict=True):
            answers[outcome.index] = _summarised(outcome, summary)
        handing_over = CallState("pending", "being handed over to Modal")
        return [answers.get(call.index, handing_over) for call in calls]

    async def _states(
        self, run: RunFolder, calls: list[tuple[CallRecord, str]]
    ) -> tuple[dict[int, CallState], list[tuple[CallRecord, Outcome]]]:
        """What Modal says of `calls`: the states of those still unfinished, and the outcomes of the
        others (to be stored)."""
        from mini.tls import ensure_grpc_trusts_system_ca

        ensure_grpc_trusts_system_ca()  # before modal opens its first connection
        from mini.modal_backend._invocation import OutputExpired, on_client_loop
        from mini.modal_backend.call_index import list_inputs, poll_calls

        function_id = (run.read_json(_APP_FILE) or {}).get("function_id")
        listed = None
        if function_id and len(calls) > 1:  # for one call, asking for its output is as cheap
            async with _asking_modal(calls[0][1]):
                listed = await on_client_loop(list_inputs(function_id, since=run.record().created))
        states: dict[int, CallState] = {}
        to_poll: list[tuple[CallRecord, str]] = []
        for call, call_id in calls:
            standing = listed.get(call_id) if listed is not None else None
            if standing is None or standing.state == "finished":
                to_poll.append((call, call_id))
            elif standing.state == "queued":
                states[call.index] = CallState("running", "queued on Modal")
            else:
                states[call.index] = CallState("running", "running on Modal", started=standing.started)
        polled = await on_client_loop(poll_calls([(call_id, call.index) for call, call_id in to_poll]))
        finished: list[tuple[CallRecord, Outcome]] = []
        for (call, call_id), answer in zip(to_poll, polled, strict=True):
            if isinstance(answer, OutputExpired):
                states[call.index] = _EXPIRED
            elif isinstance(answer, BaseException):
                async with _asking_modal(call_id):
                    raise answer
            elif answer is None:
                states[call.index] = CallState("running", "on Modal, queued or running")
            else:
                finished.append((call, answer))
        return states, finished

    def cancel(self, run: RunFolder, call: CallRecord) -> None:
        # Without an id, Modal holds nothing of this call to stop (unless a launcher is spawning it now).
        call_id = self.backend_id(run, call)
        if call_id is not None:
            _loop.wait(self._cancel(call_id))

    async def _cancel(self, call_id: str) -> None:
        async with _asking_modal(call_id):
            await _function_call(call_id).cancel.aio()

    def logs(self, run: RunFolder, call: CallRecord) -> str:
        where = run.read_json(_APP_FILE) or {}
        app_id = where.get("app_id", "?")
        call_id = self.backend_id(run, call) or "(not spawned)"
        text = (
            f"logs: see the Modal dashboard. mini keeps no copy of what Modal calls print; this is call "
            f"{call_id} of function {where.get('function', '?')} in app {app_id}. "
            f"From a shell in this project: `bin/modal app logs {app_id}`.\n"
        )
        summary = run.outcome_summary(call.index)
        if summary is not None and not summary["ok"]:
            from mini.serialization import decode_error

            error = decode_error(run.load_outcome(call.index).data)
            text += getattr(error.__cause__, "text", "") or f"{summary['error']}\n"
        return text


_EXPIRED = CallState(
    "failed", "Modal no longer holds its result (it keeps results for 7 days) and mini had not fetched it"
)


def _settled(run: RunFolder, call: CallRecord, outcome: Outcome) -> CallState:
    """Store the outcome Modal gave for `call` in the run folder (Modal keeps it for a limited time only),
    and say what it was."""
    encoded = _encoded(call, outcome)
    run.store_outcome(call.index, encoded)
    return _summarised(encoded, run.outcome_summary(call.index) or {})


def _encoded(call: CallRecord, outcome: Outcome) -> Outcome:
    """`outcome` as the run folder keeps it: an error Modal raised (not the call) encoded as mini's."""
    if not outcome.ok and isinstance(outcome.data, BaseException):
        from mini.serialization import Outcome, encode_error

        return Outcome(call.index, False, encode_error(outcome.data))
    return outcome


def _summarised(outcome: Outcome, summary: dict[str, Any]) -> CallState:
    return CallState(
        "done" if outcome.ok else "failed", summary.get("error") or "", finished=summary.get("finished")
    )


def _function_call(call_id: str) -> Any:
    from mini.tls import ensure_grpc_trusts_system_ca

    ensure_grpc_trusts_system_ca()  # before modal opens its first connection
    import modal

    return modal.FunctionCall.from_id(call_id)


@contextlib.asynccontextmanager
async def _asking_modal(call_id: str) -> AsyncIterator[None]:
    """Turn Modal's errors about reaching or knowing a call into one clear `RunError`."""
    import modal

    try:
        yield
    except modal.exception.AuthError:
        raise token_error() from None
    except modal.exception.NotFoundError as error:
        raise RunError(
            f"Modal does not know function call {call_id} ({error}): the run was launched with another "
            "Modal workspace or environment; use that one's token."
        ) from None
    except modal.exception.ConnectionError as error:
        raise RunError(
            f"cannot reach Modal to ask about call {call_id} ({error}); try again later."
        ) from None
