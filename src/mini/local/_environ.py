"""Applying the `env` option around a call, in whichever thread or process runs it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext


def applied(env: Mapping[str, str] | None) -> AbstractContextManager[None]:
    """`env` set in `os.environ` for the block, then restored; nothing to do (and nothing to pay) without."""
    return _applied(env) if env else nullcontext()


@contextmanager
def _applied(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
