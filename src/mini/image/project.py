"""Finding the user's project and reading its `pyproject.toml`.

root = find_project_root()          # nearest folder with a pyproject.toml, from the working directory up
pyproject = read_pyproject(root)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mini.image.errors import ImageSpecError, ProjectNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding a `pyproject.toml`. Without `start`: the folder
    `MINI_PROJECT` names (`bin/mini` sets it to its own project), else the working directory's project.

    find_project_root(Path("src/mini"))  # Path("/home/me/mini")
    """
    named = os.environ.get("MINI_PROJECT") if start is None else None
    if named:
        root = Path(named).expanduser().resolve()
        if not (root / "pyproject.toml").is_file():
            raise ProjectNotFoundError(
                f"MINI_PROJECT names {root}, which holds no pyproject.toml. Point it (or --project) at "
                "your project's folder."
            )
        return root
    here = (start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise ProjectNotFoundError(
        f"no pyproject.toml in {here} or any folder above it. Run mini from inside your project, "
        "or create one with `uv init --package`."
    )


def read_pyproject(project_root: Path) -> dict[str, Any]:
    """The parsed `pyproject.toml` of a project.

    read_pyproject(root)["project"]["name"]  # "mini"
    """
    path = project_root / "pyproject.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProjectNotFoundError(
            f"no pyproject.toml in {project_root}. "
            "Pass the folder that holds it, or create one with `uv init --package`."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ImageSpecError(f"{path} is not valid TOML ({error}). Fix it, then retry.") from None
