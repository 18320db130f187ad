"""(e) A lambda and a closure defined in `__main__`, on every runner.

Functions defined in a script cannot be pickled by reference, which is what trips ProcessPoolExecutor.
`run()` starts `python -m bench.closures` so that the functions really live in `__main__`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_REPOSITORY = Path(__file__).resolve().parents[1]

# What a user writes at the top of a script: run as `python -m bench.closures`, these live in `__main__`.
square = lambda x: x * x  # noqa: E731


def shifted_by(offset: int) -> Callable[[int], int]:
    def shifted(x: int) -> int:
        return x + offset

    return shifted


def run() -> dict[str, dict[str, str]]:
    """Per runner, `"ok"` or the error each function raised.

    >>> run()["ProcessPool(2)"]["lambda"]
    "PicklingError: Can't pickle <function <lambda> ...>"
    """
    child = subprocess.run(
        [sys.executable, "-m", "bench.closures"],
        cwd=_REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if child.returncode != 0:
        raise RuntimeError(f"python -m bench.closures failed ({child.returncode}):\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _attempt(check: Callable[[], bool]) -> str:
    try:
        return "ok" if check() else "wrong result"
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"


def _main() -> None:
    from bench.competitors import open_all

    shifted = shifted_by(10)
    outcomes: dict[str, dict[str, Any]] = {}
    runners = open_all()
    try:
        for runner in runners:
            outcomes[runner.name] = {
                "lambda": _attempt(lambda r=runner: r.run(square, 7) == 49),
                "closure": _attempt(lambda r=runner: r.map(shifted, [1, 2, 3]) == [11, 12, 13]),
            }
    finally:
        for runner in runners:
            runner.close()
    print(json.dumps(outcomes))


if __name__ == "__main__":
    _main()
