"""Starting from a bundle (``init_from``): a new head on its encoder, frozen or fine-tuned, and
the errors that name what does not fit. Real training, on the toy reversal bundle."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import ConfigurationError, load_config
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.training import train
from tests.conftest import REPO, free_port, real_corpora, reversal_pairs, wait_serving

TEXTS = [line.split("\t")[0] for line in reversal_pairs(12, seed=77)]
BIN = Path(sys.executable).parent
README_BASH = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def copy_corpus(tmp_path_factory) -> Path:
    """A second task for the same Korean source: say it back as it is."""
    root = tmp_path_factory.mktemp("copy")
    for name, count, seed in (("train.tsv", 3000, 5), ("valid.tsv", 100, 6)):
        lines = [
            f"{s}\t{s}\tcopy" for s, _, _ in (p.split("\t") for p in reversal_pairs(count, seed))
        ]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def write_config(path: Path, base: Path, corpus: Path, **top) -> Path:
    raw = {
        "name": "toy-plus",
        "init_from": str(base),
        "data": {"root": str(corpus), "max_source_length": 20, "max_target_length": 20},
        "tasks": {
            "copy": {"train": "train.tsv", "valid": "valid.tsv", "target": {"kind": "mecab"}}
        },
        "training": {
            "output_dir": str(path.parent / "run"),
            "max_steps": 150,
            "valid_every": 150,
            "valid_max_examples": 50,
            "learning_rate": 0.005,
            "warmup_steps": 20,
            "progress": False,
        },
        **top,
    }
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def test_a_new_head_on_a_frozen_encoder_leaves_the_old_task_exactly_as_it_was(
    toy_bundle_path, copy_corpus, tmp_path
):
    cfg = load_config(
        write_config(tmp_path / "c.yaml", toy_bundle_path, copy_corpus, freeze_encoder=True)
    )
    assert cfg.model.hidden_size == 96 and cfg.source.kind == "mecab"  # the base's, inherited
    out = load_bundle(train(cfg, resume=False))
    base = load_bundle(toy_bundle_path)
    assert out.tasks == ["reverse", "copy"]
    new, old = out.model.state_dict(), base.model.state_dict()
    for name, tensor in old.items():  # the encoder and the old head, bit for bit
        assert torch.equal(new[name], tensor), name
    assert (
        out.manifest["tasks"]["reverse"]["valid_scores"]
        == base.manifest["tasks"]["reverse"]["valid_scores"]
    )
    assert out.manifest["tasks"]["copy"]["valid_scores"]["rouge_l"] > 0
    assert out.manifest["training"]["init_from"] == {
        "id": base.id, "version": base.version, "freeze_encoder": True, "hidden_size": 96,
    }  # fmt: skip
    before = [g.text for g in Pipeline.from_bundle(base).generate("reverse", TEXTS)]
    after = [g.text for g in Pipeline.from_bundle(out).generate("reverse", TEXTS)]
    assert after == before
    assert (out.path / "shortlist.reverse.safetensors").is_file()  # carried with its head


def test_fine_tuning_a_task_it_has_changes_its_weights(toy_bundle_path, copy_corpus, tmp_path):
    path = write_config(tmp_path / "c.yaml", toy_bundle_path, copy_corpus)
    raw = yaml.safe_load(path.read_text())
    raw["tasks"] = {"reverse": {"train": "train.tsv", "valid": "valid.tsv"}}  # copy data now
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    out = load_bundle(train(load_config(path), resume=False))
    base = load_bundle(toy_bundle_path)
    assert out.tasks == ["reverse"]
    name = next(n for n in base.model.state_dict() if n.startswith("encoder."))
    assert not torch.equal(out.model.state_dict()[name], base.model.state_dict()[name])
    assert out.targets["reverse"].vocab.itos == base.targets["reverse"].vocab.itos


def test_fine_tuning_a_head_it_has_on_the_frozen_encoder_changes_that_head_only(
    toy_bundle_path, copy_corpus, tmp_path
):
    path = write_config(tmp_path / "c.yaml", toy_bundle_path, copy_corpus, freeze_encoder=True)
    raw = yaml.safe_load(path.read_text())
    raw["tasks"] = {"reverse": {"train": "train.tsv", "valid": "valid.tsv"}}  # copy data now
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    out = load_bundle(train(load_config(path), resume=False))
    new, old = out.model.state_dict(), load_bundle(toy_bundle_path).model.state_dict()
    encoder = [n for n in old if not n.startswith("heads.")]
    assert encoder and all(torch.equal(new[n], old[n]) for n in encoder)  # bit for bit
    head = [n for n in old if n.startswith("heads.reverse.")]
    assert any(not torch.equal(new[n], old[n]) for n in head)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": {"kind": "sentencepiece", "vocab_size": 500}},
         "source.kind: 'sentencepiece' is not init_from's bundle's 'mecab' .a head on its"),
        ({"model": {"embedding_dim": 64}},
         "model.embedding_dim: 64 is not init_from's bundle's 48"),
        ({"model": {"hidden_size": 64}},
         "model.hidden_size: cannot grow init_from's model: .* can only grow .96 -> 64."),
        ({"model": {"hidden_size": 128}, "freeze_encoder": True},
         "model.hidden_size: cannot grow init_from's model: freeze_encoder keeps"),
        ({"init_from": "/nonexistent/bundle"},
         "init_from: /nonexistent/bundle is not a hanseq bundle: no bundle.json"),
        ({"init_from": "", "freeze_encoder": True}, "freeze_encoder: needs init_from"),
    ],
)  # fmt: skip
def test_what_does_not_fit_the_base_is_named(
    toy_bundle_path, copy_corpus, tmp_path, change, message
):
    path = write_config(tmp_path / "c.yaml", toy_bundle_path, copy_corpus)
    raw = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ConfigurationError, match=message):
        load_config(path)


def test_the_readme_worked_example_runs_with_a_tiny_budget(tmp_path):
    """README's keyphrase example as written, on the shipped bundle and the real corpus, but
    30 steps instead of ten minutes and into a temporary folder."""
    (block,) = [b for b in README_BASH if "configs/keyphrase.yaml" in b]
    lines = [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    out = tmp_path / "run"
    bundle = str(out / "bundle")
    corpora = real_corpora()  # the config reads it from HANSEQ_CORPORA, eval's --data by path
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HANSEQ_CORPORA": str(corpora)}

    def run(line: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
        )
        assert done.returncode == 0, (line, done.stderr[-2000:])
        return done

    train_line, eval_line, serve_line, *client_lines = lines
    run(train_line.split("#")[0] + f" --max-steps 30 --output-dir {out}")
    assert json.loads((out / "bundle" / "bundle.json").read_text())["tasks"]["keyphrase"]
    eval_line = eval_line.replace("runs/keyphrase/bundle", bundle)
    scored = run(eval_line.replace("../shared/corpora", str(corpora)) + " --max-examples 40")
    assert "rouge_l" in scored.stdout
    port = free_port()
    serve = serve_line.split("#")[0].replace("runs/keyphrase/bundle", bundle).rstrip(" &")
    server = subprocess.Popen(
        ["bash", "-c", serve],  # one simple command: bash execs it, so terminate() reaches it
        cwd=REPO,
        env={**env, "HANSEQ_PORT": str(port), "HANSEQ_METRICS_PORT": "-1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, server)
        target = f"hanseq-client --target 127.0.0.1:{port} "
        health, answer = (run(ln.replace("hanseq-client ", target)) for ln in client_lines)
        assert health.stdout == "keyphrase\tSERVING\n"
        assert answer.stdout.strip()  # 30 steps say something; ten minutes say it well
    finally:
        server.terminate()
        server.wait(60)
