"""Training: multi-task heads, scheduled sampling, exact resume, checkpoint averaging."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from engine.bundle import WEIGHTS, load_bundle
from engine.training import History, average_checkpoints, train
from tests.conftest import toy_config

SHORT = dict(
    max_steps=40, valid_every=20, valid_max_examples=20, max_minutes=0.0, keep_checkpoints=2
)


def log_of(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_interrupted_then_resumed_equals_uninterrupted(toy_corpus, tmp_path):
    whole = train(toy_config(toy_corpus, tmp_path / "whole", **SHORT), resume=False)
    part = toy_config(toy_corpus, tmp_path / "part", **{**SHORT, "max_steps": 20})
    train(part, resume=False)
    resumed = train(toy_config(toy_corpus, tmp_path / "part", **SHORT), resume=True)
    assert [r["step"] for r in log_of(tmp_path / "part") if r["event"] == "validation"] == [20, 40]
    a, b = load_file(str(whole / WEIGHTS)), load_file(str(resumed / WEIGHTS))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_heads_share_one_encoder_and_scheduled_sampling_is_logged(toy_corpus, tmp_path):
    cfg = toy_config(
        toy_corpus,
        tmp_path / "multi",
        **SHORT,
        teacher_forcing={"schedule": "linear", "start": 1.0, "end": 0.5, "steps": 40},
    )
    cfg.tasks["copy"] = cfg.tasks["reverse"]  # a second head on the same data
    cfg.tasks["copy"].weight = 0.5
    bundle = load_bundle(train(cfg, resume=False))
    assert bundle.tasks == ["reverse", "copy"]
    assert set(bundle.model.heads) == {"reverse", "copy"}
    ratios = [r["gold_ratio"] for r in log_of(tmp_path / "multi") if r["event"] == "validation"]
    assert ratios == [0.75, 0.5]
    final = [r for r in log_of(tmp_path / "multi") if r["event"] == "final"][0]
    assert set(final["scores"]) == {"reverse", "copy"}


def test_checkpoint_averaging_is_the_mean(tmp_path):
    for i, value in enumerate([1.0, 3.0]):
        torch.save({"model": {"w": torch.full((2,), value)}, "score": i}, tmp_path / f"{i}.pt")
    averaged = average_checkpoints([tmp_path / "0.pt", tmp_path / "1.pt"])
    assert torch.equal(averaged["w"], torch.full((2,), 2.0))


def test_history_counts_validations_since_the_best():
    h = History([{"score": 1.0}, {"score": 3.0}, {"score": 2.0}, {"score": 2.5}])
    assert h.best() == 3.0 and h.since_best() == 2
