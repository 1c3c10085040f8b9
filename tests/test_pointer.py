"""The copy mechanism (pointer-generator heads): its maps, its arithmetic, and that it learns
what a plain generator cannot in the same steps."""

from __future__ import annotations

import random

import pytest
import torch

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import ModelConfig
from hanseq.engine.heads import build_model
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.pointer import NOT_COPYABLE, CopySources, copy_map
from hanseq.engine.search import search
from hanseq.engine.training import train
from hanseq.engine.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from tests.conftest import toy_config


def test_copy_map_links_shared_pieces_and_only_eos_of_the_specials():
    source = Vocabulary(["▁서울", "▁GIMP", "에서", "%s"])
    target = Vocabulary(["▁in", "%s", "▁GIMP"])
    mapping = copy_map(source, target).tolist()
    assert mapping[source.stoi["▁GIMP"]] == target.stoi["▁GIMP"]
    assert mapping[source.stoi["%s"]] == target.stoi["%s"]
    assert mapping[source.stoi["▁서울"]] == NOT_COPYABLE
    assert mapping[source.stoi["에서"]] == NOT_COPYABLE
    assert [mapping[i] for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)] == [
        NOT_COPYABLE,
        NOT_COPYABLE,
        NOT_COPYABLE,
        EOS_ID,
    ]


def copy_model():
    """Source ids 4-9 copy to target ids 10-15; source ids 10+ have no target twin."""
    cfg = ModelConfig(embedding_dim=16, hidden_size=24, dropout=0.0, copy=True)
    mapping = torch.full((30,), NOT_COPYABLE)
    mapping[EOS_ID] = EOS_ID
    mapping[4:10] = torch.arange(10, 16)
    torch.manual_seed(0)
    return build_model(cfg, 30, {"t": 20}, {"t": mapping}).eval()


@torch.no_grad()
def one_step(model, gate_bias: float):
    """One inference step from BOS with the gate fixed -> (probabilities over the vocabulary,
    attention weights, the plain generator's probabilities)."""
    head = model.head("t")
    head.copy.gate.weight.zero_()
    head.copy.gate.bias.fill_(gate_bias)
    src = torch.tensor([[4, 5, 4, 20, EOS_ID]])
    memory, state = head.prepare(model.encode(src, torch.tensor([5])))
    bos = torch.tensor([BOS_ID])
    logits, _, weights = head.step(bos, state, memory)
    vector = head.decoder.step(bos, state, memory)[0]
    generator = torch.softmax(head.generator(vector), -1)
    assert torch.all(logits[:, 20:] == float("-inf"))  # the inference padding stays out
    return torch.softmax(logits, -1)[0, :20], weights[0], generator[0]


def test_a_closed_gate_copies_the_attention_mass_of_each_piece():
    probs, weights, _ = one_step(copy_model(), gate_bias=-60.0)
    copyable = weights[[0, 1, 2, 4]].sum()  # position 3 (id 20) has no twin: its mass is lost
    assert torch.allclose(probs[10], (weights[0] + weights[2]) / copyable, atol=1e-5)
    assert torch.allclose(probs[11], weights[1] / copyable, atol=1e-5)
    assert torch.allclose(probs[EOS_ID], weights[4] / copyable, atol=1e-5)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_an_open_gate_is_the_plain_generator():
    probs, _, generator = one_step(copy_model(), gate_bias=60.0)
    assert torch.allclose(probs, generator, atol=1e-5)


def test_copy_heads_decode_the_same_in_a_batch_and_alone():
    model = copy_model()
    src = torch.tensor([[4, 5, 6, 7, EOS_ID], [8, 9, EOS_ID, PAD_ID, PAD_ID]])
    src_len = torch.tensor([5, 3])
    for opts in (SearchOptions(max_length=6), SearchOptions(beam_size=3, max_length=6)):
        together = search(model, "t", src, src_len, opts)
        alone = [
            search(model, "t", src[i : i + 1, : int(n)], src_len[i : i + 1], opts)[0]
            for i, n in enumerate(src_len)
        ]
        for a, b in zip(together, alone, strict=True):
            assert a[0].tokens == b[0].tokens
            assert abs(a[0].score - b[0].score) < 1e-4


NAMES = ["".join(random.Random(i).choices("bcdfghjkmnpqrstvwxz", k=5)) for i in range(1500)]


def name_pairs(count: int, seed: int) -> list[str]:
    """'A 씨 가 B 에게' -> 'B A': two of 1,500 names, each seen only a few times in training."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        a, b = rng.sample(NAMES, 2)
        lines.append(f"{a} 씨가 {b}에게\t{b} {a}\ttoy")
    return lines


def test_copy_learns_rare_names_that_the_generator_cannot(tmp_path):
    (tmp_path / "train.tsv").write_text("\n".join(name_pairs(3000, 1)) + "\n")
    # Held out: new pairs of names that occur in training, so both models could know them.
    (tmp_path / "valid.tsv").write_text("\n".join(name_pairs(200, 2)) + "\n")
    exact = {}
    for copy in (True, False):
        cfg = toy_config(tmp_path, tmp_path / f"copy-{copy}", max_steps=250, valid_every=250)
        cfg.model.copy = copy
        cfg.model.embedding_dim, cfg.model.hidden_size = 32, 64
        bundle = load_bundle(train(cfg, resume=False))
        pipeline = Pipeline.from_bundle(bundle)
        pairs = [line.split("\t") for line in name_pairs(200, 2)]
        outputs = pipeline.generate("reverse", [s for s, _, _ in pairs])
        exact[copy] = sum(o.text == t for o, (_, t, _) in zip(outputs, pairs, strict=True)) / 200
    assert exact[True] >= 0.9, exact
    assert exact[False] <= 0.5, exact


def masses_of(sources: CopySources, weights: torch.Tensor, row: int) -> dict[int, float]:
    """{target id: attention on it} of one row, ids with no mass left out."""
    pairs = zip(sources.ids[row].tolist(), sources.mass(weights)[row].tolist(), strict=True)
    return {i: m for i, m in pairs if m}


def test_copy_sources_sum_attention_per_distinct_piece_and_survive_cat_and_width():
    a = CopySources.of(torch.tensor([[10, NOT_COPYABLE, 10, 11]]))
    b = CopySources.of(torch.tensor([[12, 13, 14, NOT_COPYABLE], [NOT_COPYABLE] * 4]))
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert masses_of(a, weights, 0) == pytest.approx({10: 0.4, 11: 0.4})
    both = CopySources.cat(a.width(6), b.width(6))
    wide = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0]] * 3)
    assert masses_of(both, wide, 0) == pytest.approx(masses_of(a, weights, 0))
    assert masses_of(both, wide, 1) == pytest.approx(masses_of(b, weights.expand(2, 4), 0))
    masses = both.mass(wide)
    assert float(masses[2].sum()) == 0.0  # nothing copyable: no mass anywhere
