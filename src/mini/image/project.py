"""Reading the project's `pyproject.toml` (finding the project is `mini.project`'s job).

pyproject = read_pyproject(find_project_root())
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mini.image.errors import ImageSpecError, ProjectNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


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
