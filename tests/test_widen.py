"""Growing a model's hidden size (engine/widen.py): the grown model computes what the small one
did, its copied units part in training, and ``init_from`` with a bigger ``model.hidden_size``
starts a run where the bundle is. Real models, real training on the toy reversal bundle."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import ModelConfig, load_config
from hanseq.engine.heads import build_model
from hanseq.engine.training import train
from hanseq.engine.widen import widen
from tests.test_init_from import write_config
from tests.test_model import batch, decode_steps

VARIANTS = [
    dict(rnn="lstm", attention="general", copy=True),
    dict(rnn="gru", attention="bahdanau", peeky=True, encoder_layers=2, decoder_layers=2),
    dict(rnn="lstm", attention="general", bidirectional=False, input_feeding=False),
]


def pair(grow_to: int, **variant):
    """A small model with random weights, and the same model grown to ``grow_to``."""
    small_cfg = ModelConfig(embedding_dim=16, hidden_size=24, dropout=0.0, **variant)
    big_cfg = dataclasses.replace(small_cfg, hidden_size=grow_to)
    sizes = {"a": 20, "b": 25}
    maps = {t: torch.arange(30).where(torch.arange(30) < n, -1) for t, n in sizes.items()}
    torch.manual_seed(0)
    small = build_model(small_cfg, 30, sizes, maps).eval()
    big = build_model(big_cfg, 30, sizes, maps).eval()
    big.load_state_dict(widen(small.state_dict(), small_cfg, big_cfg, seed=3))
    return small, big


@pytest.mark.parametrize("grow_to", [48, 40])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_grown_model_computes_what_the_small_one_did(variant, grow_to):
    small, big = pair(grow_to, **variant)
    src, src_len = batch(pad_to=7)
    tgt = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    for task in ("a", "b"):
        with torch.no_grad():
            assert torch.allclose(
                small(task, src, src_len, tgt), big(task, src, src_len, tgt), atol=1e-5
            )
            small_steps, small_weights = decode_steps(small, task, src, src_len, steps=5)
            big_steps, big_weights = decode_steps(big, task, src, src_len, steps=5)
        assert torch.allclose(small_steps, big_steps, atol=1e-5)
        assert torch.allclose(small_weights, big_weights, atol=1e-6)  # the same alignment
    gates = 4 if variant["rnn"] == "lstm" else 3
    assert big.heads["a"].decoder.rnn.weight_hh_l0.shape == (gates * grow_to, grow_to)


def test_copied_units_part_when_the_grown_model_trains():
    _, big = pair(48, rnn="lstm", attention="general")
    big.train()
    optimizer = torch.optim.Adam(big.parameters(), lr=1e-2)
    src, src_len = batch(pad_to=7)
    tgt = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    for _ in range(5):
        logits = big("a", src, src_len, tgt)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = big.heads["a"].decoder.rnn.weight_hh_l0.detach()
    # unit 0 and its copy 24 (each gate's rows): equal at the start, apart after training
    for gate in range(4):
        assert not torch.allclose(rows[gate * 48], rows[gate * 48 + 24], atol=1e-6)


@pytest.mark.parametrize(
    "base, change, message",
    [
        ({}, dict(hidden_size=16), "can only grow .24 -> 16."),
        ({}, dict(hidden_size=48, rnn="gru"), "model.rnn differs"),
        (dict(attention="dot"), dict(hidden_size=48), "dot cannot be widened"),
        ({}, dict(hidden_size=49), "must split over 2 directions"),
    ],
)
def test_what_cannot_grow_is_named(base, change, message):
    old = ModelConfig(hidden_size=24, **base)
    with pytest.raises(ValueError, match=message):
        widen({}, old, dataclasses.replace(old, **change))


def test_init_from_with_a_bigger_hidden_size_starts_where_the_bundle_is(
    toy_bundle_path, toy_corpus, tmp_path
):
    path = write_config(tmp_path / "c.yaml", toy_bundle_path, toy_corpus)
    raw = yaml.safe_load(path.read_text())
    raw["tasks"] = {"reverse": {"train": "train.tsv", "valid": "valid.tsv"}}
    raw["model"] = {"hidden_size": 128}  # the toy bundle's is 96
    raw["training"].update(max_steps=20, valid_every=20, learning_rate=0.0005, warmup_steps=1)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    cfg = load_config(path)
    assert cfg.model.hidden_size == 128 and cfg.model.embedding_dim == 48  # the rest inherited
    out = load_bundle(train(cfg, resume=False))
    assert out.model_cfg.hidden_size == 128
    assert out.manifest["training"]["init_from"]["hidden_size"] == 96
    # 20 steps leave a fresh model near 0; the grown one starts at the bundle's score
    before = load_bundle(toy_bundle_path).manifest["tasks"]["reverse"]["valid_scores"]
    after = out.manifest["tasks"]["reverse"]["valid_scores"]
    assert after["rouge_l"] > 0.9 * before["rouge_l"], (before, after)
