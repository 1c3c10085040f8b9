"""The README's engine examples run (on the toy bundle instead of the 45-minute model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """Shell examples that use a bundle (generate / eval), continuation lines joined."""
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"hanseq (generate|eval)", line)]


def on_toy(text: str, bundle: Path, corpus: Path) -> str:
    text = text.replace("runs/multitask-small/bundle", str(bundle))
    text = re.sub(r"--task \w+", "--task reverse", text)
    text = re.sub(r'generate\("translate"', 'generate("reverse"', text)
    return re.sub(r"\.\./shared/corpora/\S+\.tsv", str(corpus / "valid.tsv"), text)


def test_readme_names_the_two_set_up_commands():
    assert "make serve" in README and "make test" in README


@pytest.mark.parametrize("command", commands())
def test_shell_example_runs(command, toy_bundle_path, toy_corpus):
    run = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + on_toy(command, toy_bundle_path, toy_corpus)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_python_example_runs(toy_bundle_path, toy_corpus):
    (code,) = blocks("python")
    run = subprocess.run(
        [sys.executable, "-c", on_toy(code, toy_bundle_path, toy_corpus)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_there_are_examples_to_run():
    assert len(commands()) >= 4
