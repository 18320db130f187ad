"""The options `Apparatus.w(...)` accepts, checked once for every backend.

A backend honours the options it can and records the rest; an unknown name is always an error, so a typo
such as `gpus=` never passes silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from mini.errors import OptionError


@dataclass(frozen=True)
class Options:
    """Backend options. Every field defaults to "not set" (None) so variants can be layered."""

    gpu: str | list[str] | None = None
    cpu: float | None = None
    memory: int | None = None
    timeout: float | None = None
    retries: int | None = None
    env: Mapping[str, str] | None = None
    secrets: tuple[Any, ...] | None = None
    volumes: Mapping[str, Any] | None = None
    image: Any = None
    max_containers: int | None = None
    region: str | list[str] | None = None
    startup_timeout: float | None = None
    progress: bool | None = None
    on_report: Callable[[Any], None] | None = None
    concurrent_inputs: int | None = None
    max_batch_size: int | None = None
    batch_wait_ms: float | None = None
    cache: str | bool | None = None
    """A result cache for run/map/starmap: a name (`"spirals-v1"`), or True for the apparatus's name."""

    def merged(self, changes: Mapping[str, Any]) -> Options:
        """A copy with `changes` applied on top, after checking names and values."""
        checked = {name: _check(name, value) for name, value in changes.items()}
        if "env" in checked and self.env and checked["env"] is not None:
            checked["env"] = {**self.env, **checked["env"]}
        return replace(self, **checked)

    def as_dict(self) -> dict[str, Any]:
        """The options that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def where_calls_run(self) -> dict[str, Any]:
        """The options that are set and matter where calls run (not the caller's own, such as `progress`
        or `on_report`): what makes two functions on a remote backend different."""
        return {name: value for name, value in self.as_dict().items() if name not in CALLER_SIDE}


# Options that only change what the caller sees or does, never how a call runs.
CALLER_SIDE = frozenset({"progress", "on_report", "startup_timeout", "cache"})


NAMES = frozenset(f.name for f in fields(Options))


def _check(name: str, value: Any) -> Any:
    if name not in NAMES:
        close = difflib.get_close_matches(name, sorted(NAMES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"unknown option {name!r}.{hint} Known options: {', '.join(sorted(NAMES))}.")
    if value is None:
        return None
    checker = _CHECKERS.get(name)
    return checker(name, value) if checker else value


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise OptionError(f"option {name}={value!r} must be a positive number of seconds.")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f"option {name}={value!r} must be a whole number >= 0.")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"option {name}={value!r} must be a whole number >= 1.")
    return value


def _env(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise OptionError(f"option env={value!r} must map variable names to string values.")
    return dict(value)


def _gpu(name: str, value: Any) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise OptionError(
        f"option gpu={value!r} must be a GPU type such as 'A100' or 'H100:2', or a list of them."
    )


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"option {name}={value!r} must be True or False.")
    return value


def _callable(name: str, value: Any) -> Callable[[Any], None]:
    if not callable(value):
        raise OptionError(f"option {name}={value!r} must be a function taking one argument (a mini.Report).")
    return value


def _non_negative_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise OptionError(f"option {name}={value!r} must be a number >= 0.")
    return value


def _cache(name: str, value: Any) -> str | bool:
    if isinstance(value, bool):
        return value
    from mini.cache.folders import check_name

    return check_name(value)


def _secrets(name: str, value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


_CHECKERS = {
    "timeout": _positive_number,
    "startup_timeout": _positive_number,
    "cpu": _positive_number,
    "retries": _non_negative_int,
    "memory": _positive_int,
    "max_containers": _positive_int,
    "concurrent_inputs": _positive_int,
    "max_batch_size": _positive_int,
    "batch_wait_ms": _non_negative_number,
    "on_report": _callable,
    "env": _env,
    "gpu": _gpu,
    "progress": _flag,
    "secrets": _secrets,
    "cache": _cache,
}
