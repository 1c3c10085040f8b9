"""The client package on its own: installed into a clean venv, and its README's examples run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_certificates, run_client_example

PACKAGE = REPO / "clients" / "python"
README = (PACKAGE / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def cli_examples() -> list[str]:
    lines = "\n".join(blocks("sh")).replace("\\\n", " ").splitlines()
    return [line for line in lines if re.search(r"(^|\| )hanseq-client ", line)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the examples run: it holds the PEM files the TLS example names."""
    return make_certificates(tmp_path_factory.mktemp("examples"))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_runs(index, hanseq_server, workdir):
    code = blocks("python")[index].replace("127.0.0.1:50051", hanseq_server.target)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=workdir
    )
    assert run.returncode == 0, run.stderr


def test_the_readme_shows_every_command():
    shown = " ".join(cli_examples())
    for command in ["translate", "respond", "summarize", "generate", "models", "--json"]:
        assert command in shown
    assert "--plot-attention" in shown


@pytest.mark.parametrize("command", cli_examples())
def test_cli_example_runs(command, hanseq_server, workdir):
    run = run_client_example(command, hanseq_server.target, workdir)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_installs_alone_into_a_clean_venv(tmp_path, hanseq_server):
    """`pip install ./clients/python` in a venv of its own: it brings grpcio and protobuf and
    nothing of the server (no torch), and the CLI works against a real server."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True
    ).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"hanseq-client", "grpcio", "protobuf"} <= names
    assert not names & {"torch", "hanseq", "matplotlib", "konlpy", "redis"}, names
    run = subprocess.run(
        [str(venv / "bin" / "hanseq-client"), "--target", hanseq_server.target, "models"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "translate" in run.stdout
