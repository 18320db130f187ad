"""What makes an isolated worker see what a Modal container sees: its environment variables, a fresh empty
working directory, and notes on the errors that a difference from this machine causes there.

Only the stdlib is used: the worker side runs inside environments that hold nothing but the project's
pinned dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# What an isolated worker keeps of this process's environment: what any process needs (a home, a locale,
# a place for temporary files) and how this machine reaches the network or shares its GPUs, which is the
# platform's business on Modal. Every other variable of your shell stays out, as it does on Modal.
KEPT_VARIABLES = (
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "CUDA_VISIBLE_DEVICES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    *(
        name
        for proxy in ("http", "https", "no", "all")
        for name in (f"{proxy}_proxy", f"{proxy.upper()}_PROXY")
    ),
)
# The search path of a Debian-based container image, after the worker's own interpreter.
_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def isolated_environment(python: str, pythonpath: Sequence[str]) -> dict[str, str]:
    """The variables an isolated worker starts with: `KEPT_VARIABLES` that are set here, PATH (the worker's
    interpreter first), and what mini needs (its import path, no user site-packages).

        env = isolated_environment("/cache/envs/3f2a/bin/python", ["/project/.mini/sources/9b0e"])
    """
    environment = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    environment["PATH"] = os.pathsep.join([os.path.dirname(python), *_SYSTEM_PATH])
    environment["PYTHONPATH"] = os.pathsep.join(pythonpath)
    environment["PYTHONNOUSERSITE"] = "1"
    return environment


def explain(exc: BaseException) -> None:
    """Add a note to an error that an isolated worker raises because it is not this machine's shell or
    checkout (an unset environment variable, a relative path), saying why and what to do."""
    if isinstance(exc, KeyError) and _raised_by_environ(exc):
        _add_note(
            exc,
            f"{exc.args[0]!r} is not set in this isolated worker: like a Modal container, it sees only the "
            "variables that `.w(env={...})` gives, not those of your shell. Pass it with `env=`, or as a "
            "Modal secret (`secrets=`) for credentials, and set it with `env=` for local runs too.",
        )
    elif isinstance(exc, FileNotFoundError) and _is_relative(exc.filename):
        _add_note(
            exc,
            f"{exc.filename!r} is a relative path, and an isolated worker starts in a fresh empty "
            "working directory, as a Modal container does: your checkout is not there. Ship small files "
            "inside a package under src/ and open them relative to its `__file__`, or put data on a "
            "volume (`app.volume(NAME)`: upload it, then open it under `NAME.path` in the call).",
        )


def _add_note(exc: BaseException, note: str) -> None:
    # Python 3.10 has no add_note; the note is kept where 3.11's traceback display would look for it.
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


def _raised_by_environ(exc: KeyError) -> bool:
    # `os.environ[name]` raises from `os.environ`'s own `__getitem__`: the innermost frame is that one.
    tb = exc.__traceback__
    if tb is None or len(exc.args) != 1:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is type(os.environ).__getitem__.__code__


def _is_relative(filename: object) -> bool:
    return isinstance(filename, (str, bytes, os.PathLike)) and not os.path.isabs(filename)
