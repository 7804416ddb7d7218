"""The README's commands cannot rot: every `aevb-train` line composes and validates against the
current configs (the same preflight the console script runs), and every other command names a
console script of this package or a file of this repository."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from aevb.config import Settings
from aevb.preflight import check_command_line
from aevb.train import config_dir

REPO = Path(__file__).resolve().parents[1]
TRAIN_PREFIXES = (("aevb-train",), ("python", "-m", "aevb.train"))


def readme_commands() -> list[list[str]]:
    """Command lines of the README's bash blocks: continuations joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _train_args(words: list[str]) -> list[str] | None:
    for prefix in TRAIN_PREFIXES:
        if tuple(words[: len(prefix)]) == prefix:
            # <run>, <same overrides>: placeholders the reader fills in
            return [w for w in words[len(prefix) :] if not set(w) & set("<>")]
    return None


COMMANDS = readme_commands()
TRAIN_LINES = [args for words in COMMANDS if (args := _train_args(words)) is not None]
TRAIN_IDS = [" ".join(args) or "(defaults)" for args in TRAIN_LINES]


def test_readme_has_the_commands_a_newcomer_needs() -> None:
    firsts = {words[0] for words in COMMANDS}
    assert {"pip", "aevb-train", "pytest", "tensorboard", "aevb-eval", "aevb-summarize"} <= firsts
    assert len(TRAIN_LINES) >= 10


@pytest.mark.parametrize("args", TRAIN_LINES, ids=TRAIN_IDS)
def test_readme_train_command_composes_and_validates(args: list[str]) -> None:
    problem = check_command_line(args, config_dir(), "train", validate=Settings.from_cfg)
    assert problem is None, problem


def test_other_readme_commands_exist() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    known_tools = {"pip", "pytest", "tensorboard", "ruff", "python"}
    for words in COMMANDS:
        tool = words[0]
        if tool.startswith("aevb-"):
            assert tool in scripts, f"README runs {tool}, which pyproject.toml does not install"
        elif "/" in tool:
            assert (REPO / tool).is_file(), f"README runs {tool}, which is not in the repository"
        else:
            assert tool in known_tools, f"README runs an unexpected command: {' '.join(words)}"
        if tool == "python" and words[1] != "-m":
            assert (REPO / words[1]).is_file(), f"README runs {words[1]}, which does not exist"
