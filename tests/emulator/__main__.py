"""Run the emulator until interrupted, for a CLI or a benchmark in another process.

python -m tests.emulator --port 50051
# prints `export MODAL_...=...` lines for a client; on Ctrl-C, one line of RPC counts as JSON:
# {"rpc_counts": {"AppCreate": 1, ...}}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import threading

from tests.emulator.server import run_emulator


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args()
    with run_emulator(port=args.port) as emulator:
        for name, value in emulator.client_variables().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        print(json.dumps({"rpc_counts": dict(emulator.recorder.rpc_counts)}), flush=True)


if __name__ == "__main__":
    main()
