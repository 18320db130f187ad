"""Every code block in README.md and docs/*.md runs, so the documentation cannot drift from the code.

A fenced block's info string says what happens to it:
- `python`: executed on the local backend, in order, in one namespace per page (a page reads top to bottom,
  so later blocks may use names earlier ones defined), as a script would be (`__name__ == "__main__"`);
  a block whose first line is a comment naming a file (`# my_sweep.py: ...`) is also written to that file,
  so later `bash` blocks can run it;
- `python modal`: the same, with the Modal client pointed at the emulator (`modal_emulator`);
- `bash`: run with `bash -euo pipefail`, in order, in the page's temporary project;
- `console` (commands a reader types but the suite cannot run: `./go test` would recurse, `./go auth` is
  interactive, the full sweep takes too long): not executed, but every `bin/mini` and `./go` line must parse;
- `text`, `toml`: shown only.

Each page runs in its own temporary project: the repository's pyproject.toml and uv.lock, with `src/` and
`bin/` linked in, so image specs and isolated workers see the real project while detached runs, `.mini/`
state and files the blocks write stay out of the checkout.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mini
from mini.cli import parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXECUTED = {"python", "python modal", "bash"}
SHOWN = {"console", "text", "toml"}

_FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order; a block indented inside a list is dedented."""
    found: list[Block] = []
    opened: tuple[int, str, int] | None = None  # line, info string, indentation of the fence
    body: list[str] = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        match = _FENCE.match(line)
        if opened is None and match:
            opened, body = (number, match.group(2).strip(), len(match.group(1))), []
        elif opened is not None and line.strip() == "```":
            found.append(Block(page, opened[0], opened[1], "\n".join(body) + "\n"))
            opened = None
        elif opened is not None:
            body.append(line[opened[2] :])
    assert opened is None, f"{page.name}:{opened[0]}: a code fence is never closed"
    return found


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, root / name)
    for name in ("src", "bin"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MINI_PROJECT", str(root))  # bin/mini's own project would be the repository
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # a block may add a folder of its own
    yield root


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_code_blocks_of_a_page_run(page: Path, project: Path, request: pytest.FixtureRequest):
    runnable = [block for block in blocks(page) if block.info in EXECUTED]
    if any(block.info == "python modal" for block in runnable):
        request.getfixturevalue("modal_emulator")
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in runnable:
        if block.info == "bash":
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=project,
                capture_output=True,
                text=True,
                timeout=120,
            )
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{output}"
        else:
            named = re.match(r"# (\w+\.py):", block.code)
            if named:
                (project / named.group(1)).write_text(block.code)
            exec(compile(block.code, block.where, "exec"), namespace)


def test_every_block_says_whether_it_runs():
    for page in PAGES:
        for block in blocks(page):
            assert block.info in EXECUTED | SHOWN, (
                f"{block.where}: info string {block.info!r}; use one of {sorted(EXECUTED | SHOWN)}"
            )


def test_commands_shown_but_not_run_exist_with_those_flags():
    tasks = set(re.findall(r"^\s*(\w+(?:\|\w+)*)\) \"task_", (ROOT / "go").read_text(), re.M)[0].split("|"))
    checked = 0
    for page in PAGES:
        for block in blocks(page):
            if block.info != "console":
                continue
            for line in block.code.splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["bin/mini"]:
                    verb = next((word for word in words[1:] if not word.startswith("-")), None)
                    try:
                        parser(verb).parse_args(words[1:])
                    except SystemExit:
                        pytest.fail(f"{block.where}: `{line.strip()}` is not a valid mini command")
                    checked += 1
                elif words[:1] == ["./go"]:
                    assert words[1] in tasks, f"{block.where}: ./go has no task {words[1]!r}"
                    checked += 1
    assert checked >= 5, "the console blocks lost their commands"


def test_the_api_reference_has_a_section_for_every_public_name():
    reference = (ROOT / "docs" / "api.md").read_text()
    headings = set(re.findall(r"^#+ `([\w.]+)", reference, re.M))
    missing = [name for name in mini.__all__ if name not in headings]
    assert not missing, f"docs/api.md has no section for {missing}"


def test_relative_links_point_at_files_and_headings_that_exist():
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{page.name} links to {target}: no such heading"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than `-` and `_` dropped, spaces to `-`."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
