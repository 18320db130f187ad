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
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini import _loop
from mini.modal_backend.auth import token_error
from mini.modal_backend.options import DEFAULT_MAX_CONTAINERS, DEFAULT_TIMEOUT
from mini.modal_backend.session import readable_name, run_app
from mini.project import atomic_write, exclusive_lock
from mini.runs.errors import RunError
from mini.runs.events import CallHistory, FollowedCall, to_line
from mini.runs.events import append as append_events
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
_EVENTS_LOCK = "events.lock"  # per call, held while a process copies its events from the run's Dict
_RELEASED_FILE = "modal_events_released.json"  # the run's Dict was deleted once these calls were copied
_MAX_WINDOW = 32  # Dict entries asked for at once per call
_CALLS_AT_ONCE = 64  # calls copied at once (each holds its lock, an open file, while it is copied)


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
        from mini.modal_backend.container import RunChannel

        # The record names the function `module:qualname`; the dashboard shows its last part, as for a map.
        base = run.record().function.rpartition(":")[2].rpartition(".")[2]
        name = readable_name(base, fn_blob, self._options)
        events = await _create_events_dict(run)
        spawned: list[int] = []

        def note(index: int, call_id: str) -> None:
            spawned.append(index)
            _note_spawned(run, index, call_id)

        try:
            app, function = await self._session.new_app(
                name, fn_blob, self._options, queue=RunChannel(events)
            )
            async with contextlib.AsyncExitStack() as stack:
                await run_app(app, self._options, stack, detach=True)
                self._session.announce(name, self._options)
                where = {
                    "app_id": app.app_id,
                    "function": name,
                    "function_id": function.object_id,
                    "events": events,
                }
                run.write_file(_APP_FILE, json.dumps(where).encode())
                return await _spawn_all(function, calls, note)
        except BaseException:
            if not spawned:  # no call will ever write there
                with contextlib.suppress(Exception):
                    await _delete_events_dict(events, run.id)
            raise
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


async def _create_events_dict(run: RunFolder) -> str:
    """Create the named Dict the run's calls write their events to (`container.RunChannel`); its name.

    Named after the run, plus a random part: run ids are unique within a checkout, Modal names within a
    workspace that many checkouts share.
    """
    from mini.tls import ensure_grpc_trusts_system_ca

    ensure_grpc_trusts_system_ca()  # before modal opens its first connection
    import modal

    name = f"mini-run-{run.id}-{secrets.token_hex(4)}"
    await modal.Dict.from_name(name, create_if_missing=True).hydrate.aio()
    return name


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
    queued or running. Its events (reports, where it runs, printed lines) wait in the run's Dict until a
    reader of them copies them into the run folder (`collect_events`); questions about state do not.
    """

    def __init__(self) -> None:
        self._followed: dict[Path, FollowedCall] = {}

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

    def collect_events(self, run: RunFolder, calls: Sequence[CallRecord]) -> None:
        """Copy what the calls' containers wrote to the run's Dict (`container.RunChannel`) into their
        events files: the entries after those copied already, fetched a growing window at a time. A call
        that has settled gets an `end` line after its last entry (its container wrote every entry before
        its output), so it is never asked about again; once every call of the run has one, the Dict is
        deleted. Holds each call's lock while it copies, so that two readers never copy an entry twice."""
        name = (run.read_json(_APP_FILE) or {}).get("events")
        if name is None:  # launched by a mini that kept no events
            return
        ordered = sorted(calls, key=lambda call: call.index)
        for start in range(0, len(ordered), _CALLS_AT_ONCE):
            self._collect(run, name, ordered[start : start + _CALLS_AT_ONCE])
        if len(calls) == len(run.record().calls):
            self._release_if_complete(run, name)

    def _collect(self, run: RunFolder, name: str, calls: Sequence[CallRecord]) -> None:
        with contextlib.ExitStack() as locks:
            wanted: list[tuple[CallRecord, str, int, bool]] = []
            for call in calls:
                call_id = self.backend_id(run, call)
                if call_id is None:
                    continue
                locks.enter_context(exclusive_lock(run.call_dir(call.index) / _EVENTS_LOCK))
                known = self._history(run, call.index)
                if call_id in known.ended:
                    continue
                # Settled before the fetch: then the fetch finds everything the call's container wrote.
                settled = (
                    run.outcome_summary(call.index) is not None or run.cancelled_at(call.index) is not None
                )
                wanted.append((call, call_id, known.copied.get(call_id, 0), settled))
            if wanted:
                starts = [(call_id, start) for _, call_id, start, _ in wanted]
                fetched = _loop.wait(_fetch_entries(name, run.id, starts))
                for (call, call_id, start, settled), entries in zip(wanted, fetched, strict=True):
                    lines = [
                        {**line, "source": call_id, "seq": seq}
                        for seq, entry in enumerate(entries, start)
                        for line in _lines(entry)
                    ]
                    if settled:
                        lines.append({"kind": "end", "source": call_id})
                    append_events(run.events_path(call.index), lines)

    def _history(self, run: RunFolder, index: int) -> CallHistory:
        """Call `index`'s events as this process last read them, brought up to date."""
        path = run.events_path(index)
        if path not in self._followed:
            self._followed[path] = FollowedCall(path, index)
        return self._followed[path].update()

    def _release_if_complete(self, run: RunFolder, name: str) -> None:
        ids = sorted(self.backend_id(run, call) or "" for call in run.record().calls)
        released = run.read_json(_RELEASED_FILE)
        if released is not None and released.get("calls") == ids:
            return
        for call in run.record().calls:
            if self.backend_id(run, call) not in self._history(run, call.index).ended:
                return
        _loop.wait(_delete_events_dict(name, run.id))
        run.write_file(_RELEASED_FILE, json.dumps({"dict": name, "calls": ids}).encode())

    def cancel(self, run: RunFolder, call: CallRecord) -> None:
        # Without an id, Modal holds nothing of this call to stop (unless a launcher is spawning it now).
        call_id = self.backend_id(run, call)
        if call_id is not None:
            _loop.wait(self._cancel(call_id))

    async def _cancel(self, call_id: str) -> None:
        async with _asking_modal(call_id):
            await _function_call(call_id).cancel.aio()

    def logs(self, run: RunFolder, call: CallRecord) -> str:
        """The lines the call printed (from its events), then its traceback if it failed."""
        where = run.read_json(_APP_FILE) or {}
        app_id = where.get("app_id", "?")
        call_id = self.backend_id(run, call) or "(not spawned)"
        self.collect_events(run, [call])
        lines = self._history(run, call.index).lines
        text = "".join(f"{line}\n" for _, line in lines)
        if not lines:
            why = "nothing printed yet" if "events" in where else "launched by a mini that kept no output"
            text = (
                f"({why}; this is call {call_id} of function {where.get('function', '?')} in app {app_id}, "
                f"whose containers' own log is `bin/modal app logs {app_id}`, from a shell in this project)\n"
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


def _lines(entry: bytes) -> list[dict[str, Any]]:
    """The events-file lines of one Dict entry (`container.RunChannel`)."""
    from mini.modal_backend.container import unpacked
    from mini.reports import Placement

    lines = []
    for _, kind, data in unpacked(entry):
        line = to_line(
            kind, Placement(data[0], data[1], data[2], tuple(data[3])) if kind == "started" else data
        )
        if line is not None:
            lines.append(line)
    return lines


async def _fetch_entries(name: str, run_id: str, starts: list[tuple[str, int]]) -> list[list[Any]]:
    """For each `(function call id, n)`, the entries of the run's Dict from `n` on, up to the first
    missing one (there is no gap after it: writers claim numbers in turn)."""
    import modal

    events = modal.Dict.from_name(name)
    async with _asking_modal_about_events(run_id):
        try:
            await events.hydrate.aio()
        except modal.exception.NotFoundError:  # released already: everything is in the run folder
            return [[] for _ in starts]
        return list(await asyncio.gather(*(_entries_from(events, call_id, n) for call_id, n in starts)))


async def _entries_from(events: Any, call_id: str, n: int) -> list[Any]:
    entries: list[Any] = []
    window = 1  # one request for a call with nothing new; wider while there is more
    while True:
        found = await asyncio.gather(*(events.get.aio(f"{call_id}/{k}") for k in range(n, n + window)))
        for entry in found:
            if entry is None:
                return entries
            entries.append(entry)
        n += window
        window = min(window * 2, _MAX_WINDOW)


async def _delete_events_dict(name: str, run_id: str) -> None:
    import modal

    async with _asking_modal_about_events(run_id):
        await modal.Dict.objects.delete.aio(name, allow_missing=True)


@contextlib.asynccontextmanager
async def _asking_modal_about_events(run_id: str) -> AsyncIterator[None]:
    from mini.tls import ensure_grpc_trusts_system_ca

    ensure_grpc_trusts_system_ca()  # before modal opens its first connection
    import modal

    try:
        yield
    except modal.exception.AuthError:
        raise token_error() from None
    except modal.exception.ConnectionError as error:
        raise RunError(
            f"cannot reach Modal to fetch what the calls of run {run_id} reported ({error}); try again later."
        ) from None


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
