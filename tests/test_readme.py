"""The README's engine examples run (on the toy bundle instead of the 45-minute model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.conftest import REPO, free_port, run_client_example, start_server, wait_serving

README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


# Sections whose examples need a server of their own; their tests run them (test_models.py).
OWN_SERVER = ("## Several bundles and versions",)


def blocks(language: str) -> list[str]:
    text = README
    for heading in OWN_SERVER:
        before, after = text.split(heading, 1)
        text = before + "\n## " + after.split("\n## ", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands() -> list[str]:
    """Shell examples that use a bundle (generate / eval / export), lines joined."""
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"hanseq (generate|eval|export)", line)]


def on_toy(text: str, bundle: Path, corpus: Path) -> str:
    text = text.replace("runs/multitask/bundle", str(bundle))
    text = re.sub(r"--task \w+", "--task reverse", text)
    text = re.sub(r'generate\("translate"', 'generate("reverse"', text)
    return re.sub(r"\.\./shared/corpora/\S+\.tsv", str(corpus / "valid.tsv"), text)


def test_readme_names_the_two_set_up_commands():
    assert "make serve" in README and "make test" in README


@pytest.mark.parametrize("command", commands())
def test_shell_example_runs(command, toy_bundle_path, toy_corpus, tmp_path):
    command = command.replace("/tmp/hanseq-fp16", str(tmp_path / "exported"))
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


def python_example(marker: str) -> str:
    (code,) = [b for b in blocks("python") if marker in b]
    return code


def test_engine_python_example_runs(toy_bundle_path, toy_corpus):
    code = on_toy(python_example("load_bundle"), toy_bundle_path, toy_corpus)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_service_python_example_runs(service_bundle_path):
    port = free_port()
    server = start_server(service_bundle_path, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, server)
        code = python_example("insecure_channel").replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert run.returncode == 0, run.stderr
        assert "INVALID_ARGUMENT text: must not be empty" in run.stdout
    finally:
        server.terminate()
        assert server.wait(60) == 0


def test_there_are_examples_to_run():
    assert len(commands()) >= 5


def client_commands() -> list[str]:
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    return [line for line in text.splitlines() if "hanseq-client " in line]


@pytest.mark.parametrize("command", client_commands())
def test_client_example_runs(command, hanseq_server):
    run = run_client_example(command, hanseq_server.target, REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def answer_rows() -> list[tuple[str, str, str]]:
    """README's "What it answers" table: (task, input, output) of the shipped bundle."""
    section = README.split("## What it answers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.*?) \|$", section, flags=re.M)
    return [(task, source.strip(), output.strip()) for task, source, output in rows]


def test_readme_shows_everyday_sentences_for_every_task():
    rows = answer_rows()
    assert {task for task, _, _ in rows} == {"translate", "respond", "summarize"}
    assert len(rows) >= 8


def test_readme_answers_are_what_the_shipped_defaults_give():
    """Each output in the table is what `hanseq generate` prints for it with no flags: the
    shipped bundle, its per-task default decoding, its shortlist."""
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.options import SearchOptions
    from hanseq.engine.pipeline import Pipeline

    bundle = load_bundle(REPO / "models" / "hanseq-multitask")
    pipeline = Pipeline.from_bundle(bundle)
    max_length = bundle.manifest.get("max_target_length", 100)
    for task, source, output in answer_rows():
        opts = SearchOptions(max_length=max_length, **bundle.decoding(task))
        assert pipeline.generate(task, [source], opts)[0].text == output, (task, source)
