"""The stamp every results file carries: which code made it ("commit", and whether the tracked tree
had uncommitted changes), the command line, the host and the time."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_stamp(script: str, argv: Sequence[str]) -> dict[str, object]:
    """Take it at the start of a run: the code that runs is the code stamped."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "command": " ".join([script, *argv]), "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_results(directory: Path, name: str, payload: dict[str, Any],
                  render_markdown: Callable[[dict[str, Any]], str]) -> None:
    """`name`.json (the stamped payload) and `name`.md (its rendering) in `directory`; the rendering
    is printed too."""
    from saferule_core.io_utils import atomic_write_json, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(payload)
    atomic_write_json(directory / f"{name}.json", payload)
    atomic_write_text(directory / f"{name}.md", markdown)
    print(markdown)
