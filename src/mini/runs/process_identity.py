"""Recognising a process again later, from another process, without being fooled by a reused pid.

A pid alone is not an identity: after the process exits (or the machine reboots) the number is handed out
again. On Linux we also record the process's start time (in clock ticks since boot) and the boot id, and a
process counts as the same only if all three match. Elsewhere only the pid is checked.

>>> me = identify(os.getpid())
>>> is_alive(me)
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields that follow start after the
    # last ')'. There, field 3 (state) comes first and field 22 (starttime) is the 20th.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def identify(pid: int) -> dict[str, Any]:
    """What it takes to recognise process `pid` later: `{"pid", "start", "boot"}` (JSON-serialisable)."""
    stat = _stat(pid)
    return {"pid": pid, "start": stat[1] if stat else None, "boot": _boot_id()}


def is_alive(identity: dict[str, Any]) -> bool:
    """Whether the process `identity` describes is still running (a zombie has finished running)."""
    pid = int(identity["pid"])
    boot = _boot_id()
    if identity.get("boot") and boot and identity["boot"] != boot:
        return False
    if Path("/proc/self/stat").exists():
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return identity.get("start") is None or stat[1] == identity["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
