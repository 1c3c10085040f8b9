"""Heads trained apart on one frozen encoder, put back into one bundle (``hanseq export
--head TASK=BUNDLE``). Real training: three short runs from the toy reversal bundle."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import load_config
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.training import train
from tests.conftest import REPO, real_corpora
from tests.test_cli import hanseq
from tests.test_init_from import BIN, README_BASH, TEXTS, copy_corpus, write_config  # noqa: F401


def _run(base, corpus, folder, task: str, frozen: bool):
    """A run from ``base`` that trains ``task`` on the copy data (a new head for ``copy``,
    the base's own head for ``reverse``)."""
    folder.mkdir()
    path = write_config(folder / "c.yaml", base, corpus, freeze_encoder=frozen)
    raw = yaml.safe_load(path.read_text())
    raw["tasks"] = {task: {"train": "train.tsv", "valid": "valid.tsv"}}
    if task == "copy":
        raw["tasks"][task]["target"] = {"kind": "mecab"}
    raw["training"].update(max_steps=60, valid_every=60)  # enough to move every weight
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return load_bundle(train(load_config(path), resume=False))


@pytest.fixture(scope="module")
def runs(toy_bundle_path, copy_corpus, tmp_path_factory):  # noqa: F811 (the fixture above)
    root = tmp_path_factory.mktemp("compose")
    return {
        "copy": _run(toy_bundle_path, copy_corpus, root / "copy", "copy", frozen=True),
        "reverse": _run(toy_bundle_path, copy_corpus, root / "reverse", "reverse", frozen=True),
        "unfrozen": _run(toy_bundle_path, copy_corpus, root / "unfrozen", "reverse", frozen=False),
    }


def test_a_head_from_a_run_beside_it_replaces_its_own(runs, toy_bundle, tmp_path):
    new_copy, new_reverse = runs["copy"], runs["reverse"]
    out = tmp_path / "both"
    done = hanseq(
        "export", "--model", str(new_copy.path), "--head", f"reverse={new_reverse.path}",
        "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    both = load_bundle(out)
    assert both.tasks == ["reverse", "copy"]
    weights = both.model.state_dict()
    for name, tensor in toy_bundle.model.state_dict().items():
        if not name.startswith("heads."):
            assert torch.equal(weights[name], tensor), name  # the one encoder
    for task, donor in (("reverse", new_reverse), ("copy", new_copy)):
        theirs = donor.model.state_dict()
        for name in (n for n in theirs if n.startswith(f"heads.{task}.")):
            assert torch.equal(weights[name], theirs[name]), name
        scores = donor.manifest["tasks"][task]["valid_scores"]
        assert both.manifest["tasks"][task]["valid_scores"] == scores
        expected = [g.text for g in Pipeline.from_bundle(donor).generate(task, TEXTS)]
        assert [g.text for g in Pipeline.from_bundle(both).generate(task, TEXTS)] == expected
    came = json.loads((out / "bundle.json").read_text())["training"]["heads_from"]
    assert came == {
        "reverse": {
            "id": new_reverse.id,
            "version": new_reverse.version,
            "steps": new_reverse.manifest["training"]["steps"],
            "data_fingerprint": new_reverse.manifest["training"]["data_fingerprint"],
        }
    }
    assert (out / "shortlist.reverse.safetensors").read_bytes() == (
        new_reverse.path / "shortlist.reverse.safetensors"
    ).read_bytes()


def test_a_head_is_added_from_a_run_that_trained_it(runs, toy_bundle_path, tmp_path):
    out = tmp_path / "added"
    done = hanseq(
        "export", "--model", str(toy_bundle_path), "--head", f"copy={runs['copy'].path}",
        "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    added = load_bundle(out)
    assert added.tasks == ["reverse", "copy"]
    # other weights, so another version: a server and its cache tell them apart
    assert re.fullmatch(r"\d{8}-\d{6}", added.version)
    assert added.version != load_bundle(toy_bundle_path).version


@pytest.mark.parametrize(
    "donor, flag, message",
    [
        ("unfrozen", "reverse={}", "its encoder differs from .* \\(first at encoder\\."),
        ("reverse", "copy={}", "that bundle has no task 'copy' \\(reverse\\)"),
        ("reverse", "reverse", "--head reverse: expected TASK=BUNDLE"),
    ],
)  # fmt: skip
def test_a_head_that_cannot_fit_is_refused_by_name(
    runs, toy_bundle_path, tmp_path, donor, flag, message
):
    out = tmp_path / "refused"
    done = hanseq(
        "export", "--model", str(toy_bundle_path), "--head", flag.format(runs[donor].path),
        "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert re.search(message, done.stderr), done.stderr
    assert not out.exists()


def test_the_readme_example_runs_with_a_tiny_budget(tmp_path):
    """README's two runs side by side and their export, as written, on the shipped bundle, but
    20 steps each instead of 95 minutes, into temporary folders and on the first lines of each
    corpus (reading all 216,570 translate pairs is most of such a run)."""
    (block,) = [b for b in README_BASH if "export --model runs/heads-respond-summarize" in b]
    lines = [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    first, second, wait, export = lines
    assert first.endswith("&") and wait == "wait"
    corpora = _first_lines(real_corpora(), tmp_path / "corpora")
    runs = {name: tmp_path / name for name in ("heads-respond-summarize", "heads-translate")}
    for line, (name, out) in zip((first, second), runs.items(), strict=True):
        assert name in line
        run_line(line.rstrip(" &") + f" --max-steps 20 --output-dir {out}", corpora)
    for name, out in runs.items():
        export = export.replace(f"runs/{name}/bundle", str(out / "bundle"))
    run_line(export.replace("/tmp/hanseq-heads", str(tmp_path / "both")), corpora)
    both = load_bundle(tmp_path / "both")
    assert both.tasks == ["translate", "respond", "summarize"]
    assert set(both.manifest["training"]["heads_from"]) == {"translate"}


def _first_lines(root: Path, out: Path, count: int = 1500) -> Path:
    """The corpora the configs read, each TSV cut to its first ``count`` lines; the dialogue
    context files whole (their turns are found by message and reply)."""
    for corpus in ("translate-koen", "dialogue-ko", "summarize-ko"):
        (out / corpus).mkdir(parents=True)
        for path in (root / corpus).iterdir():
            if path.suffix == ".tsv":
                with path.open(encoding="utf-8") as f:
                    head = [line for line, _ in zip(f, range(count), strict=False)]
                (out / corpus / path.name).write_text("".join(head), encoding="utf-8")
            elif path.name.endswith(".context.jsonl"):
                (out / corpus / path.name).symlink_to(path)
    return out


def run_line(line: str, corpora: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HANSEQ_CORPORA": str(corpora)}
    done = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )
    assert done.returncode == 0, (line, done.stderr[-2000:])
