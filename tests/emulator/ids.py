"""Object ids shaped like Modal's: a type prefix, a dash and 22 letters or digits (`ap-...`, `fc-...`).

    new_id("fc")   # "fc-0000000000000000000007"

The shape matters to the client: `modal app logs` takes an argument matching `ap-[a-zA-Z0-9]{22}` for
an app id and anything else for an app name.
"""

from __future__ import annotations

import itertools

_numbers = itertools.count(1)


def new_id(prefix: str) -> str:
    """A fresh id of the given type, unique in this process."""
    return f"{prefix}-{next(_numbers):022d}"
