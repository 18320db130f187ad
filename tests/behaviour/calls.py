"""Functions the behaviour suite maps. They are pickled by value (see conftest), as user code from a
script or notebook would be, so they run wherever a backend runs calls."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, *, bias: int = 0) -> int:
    return x + y + bias


def append_and_return(items: list[int]) -> list[int]:
    items.append(99)
    return items


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def crash_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(13)
    return x


def read_env(name: str) -> str | None:
    return os.environ.get(name)


def wait_for(path: str, limit: float = 60.0) -> bool:
    """Block until `path` exists (another call creates it); a barrier between calls, bounded by `limit`."""
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return True


def first_waits_for_second(x: int, folder: str) -> int:
    """Call 0 cannot finish before call 1 has: forces completion order [1, 0]."""
    if x == 0:
        wait_for(os.path.join(folder, "second-done"))
    else:
        Path(folder, "second-done").touch()
    return x


def mark_and_block(x: int, folder: str) -> int:
    """Record that call x started (with the pid running it), then block until released."""
    # Written then renamed: a worker killed mid-write must not leave an empty marker behind.
    Path(folder, f".started-{x}").write_text(str(os.getpid()))
    os.replace(Path(folder, f".started-{x}"), Path(folder, f"started-{x}"))
    wait_for(os.path.join(folder, "release"))
    Path(folder, f"finished-{x}").touch()
    return x


def mark(x: int, folder: str) -> int:
    Path(folder, f"started-{x}").touch()
    return x


def flaky(x: int, folder: str, failures: int) -> int:
    """Fails the first `failures` attempts of each input, counted in files."""
    counter = Path(folder, f"attempts-{x}")
    attempts = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempts + 1))
    if attempts < failures:
        raise RuntimeError(f"attempt {attempts + 1} of input {x} fails")
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class NeedsTwoArgs(Exception):
    """An exception whose constructor pickle cannot replay."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}-{b}")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs("x", "y")


def quick_or_block(x: int, folder: str) -> int:
    """Input 0 returns at once; the others record their start and block until released."""
    if x == 0:
        return x
    return mark_and_block(x, folder)


def zero_blocks(x: int, folder: str) -> int:
    """Input 0 blocks until released; the others return at once."""
    if x == 0:
        wait_for(os.path.join(folder, "release"))
    return x


def zero_first_and_sum(array):
    """Mutates its argument in place (the caller must not see it) and returns the sum before."""
    total = float(array.sum())
    array[0] = 0
    return total


def ones(n: int):
    import numpy

    return numpy.ones(n)


def finish_after(x: int, folder: str, waits: list[str], fate: str) -> int:
    """Call x waits for the markers `waits`, then leaves its own (`done-x`) and returns x; with `fate`
    "stuck" it runs past any timeout instead, with "crash" it kills its process."""
    if fate == "stuck":
        time.sleep(120)
    elif fate == "crash":
        os._exit(13)
    for name in waits:
        wait_for(os.path.join(folder, name))
    Path(folder, f"done-{x}").touch()
    return x


def offset_by(amount: int):
    """A distinct function per `amount` (its own pickle, its own function everywhere it runs)."""

    def add_offset(x: int) -> int:
        return x + amount

    add_offset.__name__ = f"add_{amount}"
    add_offset.__qualname__ = f"offset_by.add_{amount}"
    return add_offset


def where_am_i(x: int) -> tuple:
    """The call context this call sees: (index, backend kind)."""
    from mini.runtime import current

    context = current()
    return (None, None) if context is None else (context.index, context.backend)


# ----- volumes: each takes the `mini.Volume` handle as an argument (it pickles) ----------------------------


def write_in_volume(volume, path: str, data: bytes) -> str:
    """Write `data` at `path` under `volume.path`, where the call runs; return the folder it wrote in."""
    target = volume.path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return str(volume.path)


def read_in_volume(volume, path: str) -> bytes | None:
    """The bytes at `path` under `volume.path`, or None if there is no such file where the call runs."""
    target = volume.path / path
    return target.read_bytes() if target.is_file() else None


def write_then_fail(volume, path: str) -> None:
    """A call that fails after writing part of its output (a partial checkpoint)."""
    target = volume.path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"partial")
    raise RuntimeError("failed after writing a partial checkpoint")


def use_volume_api(volume, operation: str, path: str):
    """One of the handle's methods, called inside a call (where it uses the volume as the call sees it)."""
    if operation == "read_bytes":
        return volume.read_bytes(path)
    if operation == "listdir":
        return volume.listdir(path)
    raise ValueError(f"unknown operation {operation!r}")


def read_beside(volume, path: str, folder: str, me: int, others: int) -> tuple[str, bytes | None]:
    """Read `path` in `volume` while `others` other calls run too (each waits until all have started, so
    that each runs in a container of its own); returns (the container's task id, what this call read)."""
    Path(folder, f"started-{me}").touch()
    for other in range(others + 1):
        wait_for(os.path.join(folder, f"started-{other}"))
    return os.environ.get("MODAL_TASK_ID", ""), read_in_volume(volume, path)


async def async_add(x: int, y: int) -> int:
    import asyncio

    await asyncio.sleep(0.001)
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x + y


def count_up(folder: str, limit: float = 60.0):
    """Yield 0, 1, 2, ... leaving `yielded-i` (with this process's pid) before each, and waiting for the
    consumer's `proceed-i` first: a generator that cannot run ahead of its consumer by more than one."""
    for i in itertools.count():
        wait_for(os.path.join(folder, f"proceed-{i}"), limit)
        Path(folder, f"yielded-{i}").write_text(str(os.getpid()))
        yield i


async def async_count(n: int):
    import asyncio

    for i in range(n):
        await asyncio.sleep(0)
        yield i * 10


def broken_generator(n: int):
    yield from range(n)
    raise RuntimeError(f"broke after {n}")


def sum_columns(xs: list, ys: list) -> list:
    """A batched function: one list per parameter in, one result per input out; records each batch's size."""
    return [(x + y, len(xs)) for x, y in zip(xs, ys, strict=True)]


def short_by_one(xs: list) -> list:
    return xs[:-1]


def refuses_batches_with_a_seven(xs: list) -> list:
    if 7 in xs:
        raise ValueError("7 is not allowed")
    return xs


def concurrent_meeting(x: int, folder: str, meet: int, total: int) -> tuple[int, int]:
    """Wait until `meet` calls run in this process at once, or until all `total` calls have started (so no
    call waits for company that cannot come); return (pid, how many ran here at once then)."""
    pid = os.getpid()
    Path(folder, f"in-{pid}-{x}").touch()
    deadline = time.monotonic() + 60
    while True:
        running = len(list(Path(folder).glob(f"in-{pid}-*"))) - len(list(Path(folder).glob(f"out-{pid}-*")))
        started = len(list(Path(folder).glob("in-*")))
        if running >= meet or started >= total or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    Path(folder, f"out-{pid}-{x}").touch()
    return pid, running


def block_or_return(x: int) -> int:
    if x == 0:
        time.sleep(120)
    return x


def reporting(x: int, folder: str) -> int:
    """Report, then wait until the caller says it saw the report (so reports must arrive while it runs)."""
    import mini

    mini.report(step=0, x=x)
    wait_for(os.path.join(folder, f"seen-{x}"))
    mini.report(step=1, x=x, phase="done")
    return x


def printing(x: int, folder: str) -> int:
    print(f"hello from {x}", flush=True)
    wait_for(os.path.join(folder, f"heard-{x}"))
    return x


def loads_once(x: int) -> tuple[int, int]:
    """The example's per-worker data loader: (pid, how many times this process loaded the data set)."""
    from experiment import data

    data.training_set(64, seed=0)
    return os.getpid(), data.training_set.cache_info().misses


def bad_report() -> None:
    import mini

    mini.report(loss=[0.1, 0.2])


# ----- the result cache: each execution leaves a file, so a test counts them ------------------------


def tally(x: int, folder: str) -> int:
    """Leaves a file for each execution (`ran-X-...`), so a test counts how often each input ran."""
    Path(folder, f"ran-{x}-{os.getpid()}-{uuid.uuid4().hex}").touch()
    return x * x


def tally_or_block(x: int, folder: str, quick: int) -> int:
    """`tally`; inputs from `quick` on then block until `folder/release` exists."""
    tally(x, folder)
    if x >= quick:
        wait_for(os.path.join(folder, "release"))
    return x * x


def tally_failing_once(x: int, folder: str, bad: int) -> int:
    """`tally`; input `bad` fails the first time it runs (a marker file remembers), then succeeds."""
    tally(x, folder)
    marker = Path(folder, f"failed-{x}")
    if x == bad and not marker.exists():
        marker.touch()
        raise ValueError(f"input {x} fails once")
    return x * x


def tally_after_everyone(x: int, folder: str) -> int:
    """`tally`, once as many processes as `folder/expected` says are running calls (when it says)."""
    expected = Path(folder, "expected")
    if expected.exists():
        Path(folder, f"process-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(list(Path(folder).glob("process-*"))) < int(expected.read_text()):
            if time.monotonic() > deadline:
                raise TimeoutError("the other processes never started")
            time.sleep(0.005)
    return tally(x, folder)


def tally_columns(xs: list, folders: list) -> list:
    """A batched `tally`: one file per input it is given, and each input's square."""
    return [tally(x, folder) for x, folder in zip(xs, folders, strict=True)]


def identity(x):
    return x


def fill_and_sum(array, value: float) -> float:
    """Writes `value` all over its argument (the caller must not see it) and returns the sum before."""
    total = float(array.sum())
    array[:] = value
    return total


def full(n: int, value: float):
    import numpy

    return numpy.full(n, value)


def mapping_of(array) -> str:
    """Where the memory of `array` lies in the process running the call: the name of its mapping in
    /proc/self/maps ("/memfd:mini (deleted)" for mini's shared memory, "" for private memory)."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split(maxsplit=5)
            low, high = (int(end, 16) for end in span.split("-"))
            if low <= address < high:
                return rest[4].strip() if len(rest) > 4 else ""
    return "?"


def keep_full(n: int, value: float):
    """Returns an array it also keeps in this worker (see `change_kept`)."""
    import sys

    import numpy

    array = numpy.full(n, value)
    sys.__dict__.setdefault("_mini_tests_kept", []).append(array)
    return array


def change_kept(value: float) -> int:
    """Writes `value` all over the arrays `keep_full` kept in this worker; how many there were."""
    import sys

    kept = sys.__dict__.get("_mini_tests_kept", [])
    for array in kept:
        array[:] = value
    return len(kept)


def scribble_then_crash_once(array, marker: str) -> float:
    """The sum of its argument, after writing -1 all over it; the first time (no `marker` yet) it kills
    its process instead of returning."""
    total = float(array.sum())
    array[:] = -1
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(13)
    return total


def crash_holding(array) -> None:
    """Kills its process while holding its (large) argument."""
    os._exit(13)


def mark_and_block_holding(x: int, folder: str, array) -> float:
    """`mark_and_block`, holding a (large) argument meanwhile."""
    mark_and_block(x, folder)
    return float(array.sum())


def print_unfinished(x: int) -> int:
    """Prints a line without its end on each stream, then returns."""
    import sys

    print(f"unfinished {x} out", end="")
    print(f"unfinished {x} err", end="", file=sys.stderr)
    return x
