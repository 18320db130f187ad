"""Finding and loading the experiment `mini run` was pointed at."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mini.errors import MiniError


class ExperimentError(MiniError):
    """The experiment could not be found or does not define main(app)."""


def load_experiment(target: str) -> ModuleType:
    """Import `target` (a `.py` path or a dotted module name) and check that it defines `main(app)`."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        module = _load_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            if error.name and target.startswith(error.name):
                raise ExperimentError(
                    f"no module named {target!r}. Give a .py file, or a module importable from src/ "
                    "(e.g. experiment.sweep)."
                ) from error
            raise
    if not callable(getattr(module, "main", None)):
        raise ExperimentError(f"{target} defines no main(app) function to call.")
    return module


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ExperimentError(f"no such file: {path}")
    path = path.resolve()
    dotted = _importable_name(path)
    if dotted:  # a file under src/: import it as the module it is, so workers import it the same way
        return importlib.import_module(dotted)
    # A standalone script: its functions must travel by value, as cloudpickle does for __main__.
    import cloudpickle

    name = f"mini_experiment_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module


def _importable_name(path: Path) -> str | None:
    for entry in sys.path:
        root = Path(entry or ".").resolve()
        try:
            relative = path.with_suffix("").relative_to(root)
        except ValueError:
            continue
        parts = relative.parts
        if all(part.isidentifier() for part in parts) and (root / parts[0]).is_dir():
            return ".".join(parts)
    return None


def run_main(
    module: ModuleType, backend: str, name: str, settings: dict[str, Any], options: dict[str, Any]
) -> Any:
    """Build the apparatus, call the experiment's `main(app)` with `options` applied, and close it."""
    from mini import backends

    with backends.make(backend, name, **settings) as app:
        return module.main(app.w(**options))
