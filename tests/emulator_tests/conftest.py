"""The emulator's own tests: the session fixture, and the shipped sample package made importable."""

import sys
from pathlib import Path

# `Image.add_local_python_source("emulated_pkg")` finds the package through sys.path, as it would in a
# user's project; it lives beside the tests so that it is not importable by accident anywhere else.
sys.path.insert(0, str(Path(__file__).parent / "shipped"))
