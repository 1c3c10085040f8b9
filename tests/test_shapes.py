"""The shape grid (engine/shapes.py): decoding stays on its sizes and answers as it did off it."""

from __future__ import annotations

import pytest
import torch

from hanseq.engine import shapes
from hanseq.engine.columns import ColumnGenerator
from hanseq.engine.continuous import RunningBatch
from hanseq.engine.options import SearchOptions
from tests.conftest import encode_texts, reversal_pairs
from tests.test_model import tiny

INPUTS = [line.split("\t")[0] for line in reversal_pairs(40, seed=11)]
GRID = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128}


def test_the_grid():
    assert [shapes.rows(n) for n in (0, 1, 2, 3, 4, 5, 7, 9, 13, 33, 49, 64, 65)] == [
        0, 1, 2, 3, 4, 6, 8, 12, 16, 48, 64, 64, 96,
    ]  # fmt: skip
    assert all(shapes.rows(n) >= n and shapes.rows(n) in GRID for n in range(1, 129))
    assert [shapes.width(n) for n in (1, 8, 9, 160)] == [8, 8, 16, 160]
    assert [shapes.columns(n) for n in (1, 128, 300, 1455)] == [128, 128, 384, 1536]
    assert [shapes.tokens(n) for n in (1, 64, 65, 1150)] == [64, 64, 128, 1152]


@pytest.fixture
def grid_off(monkeypatch):
    monkeypatch.setattr(shapes, "ON", False)


@pytest.fixture
def recorded(pipeline, monkeypatch):
    """Every decoder step's (rows, source width, shortlist columns) on the reverse head."""
    head = pipeline.model.head("reverse")
    seen: list[tuple[int, int, int]] = []
    step = head.step

    def recording(prev, state, memory):
        short = memory.shortlist
        seen.append((prev.size(0), memory.values.size(1), 0 if short is None else 1))
        return step(prev, state, memory)

    monkeypatch.setattr(head, "step", recording)
    return seen


@pytest.mark.parametrize("count", [5, 11, 23])
@pytest.mark.parametrize("opts", [SearchOptions(), SearchOptions(beam_size=3)])
def test_answers_are_those_of_every_shape_as_it_comes(pipeline, count, opts, monkeypatch):
    texts = INPUTS[:count]
    on = pipeline.generate("reverse", texts, opts)
    monkeypatch.setattr(shapes, "ON", False)
    off = pipeline.generate("reverse", texts, opts)
    assert [a.text for a in on] == [b.text for b in off]
    assert [a.score for a in on] == pytest.approx([b.score for b in off], abs=1e-4)


def test_beam_search_steps_on_the_grid(pipeline, recorded):
    pipeline.generate("reverse", INPUTS[:23], SearchOptions(beam_size=3))
    inputs = {rows // 3 for rows, _, _ in recorded}
    assert inputs <= GRID and 24 in inputs and len(inputs) > 1  # it started at 24 and shrank
    assert all(width % shapes.WIDTH_MULTIPLE == 0 for _, width, _ in recorded)


def test_beam_search_off_the_grid_steps_as_it_comes(pipeline, recorded, grid_off):
    pipeline.generate("reverse", INPUTS[:23], SearchOptions(beam_size=3))
    assert 23 in {rows // 3 for rows, _, _ in recorded}


def test_a_cancelled_input_off_the_grid_leaves_the_others_unchanged(pipeline):
    texts, calls = INPUTS[:5], {"n": 0}  # 5 inputs: the batch holds a sixth, masked

    def cancelled():
        calls["n"] += 1
        return [i == 4 and calls["n"] >= 2 for i in range(len(texts))]

    opts = SearchOptions(beam_size=3)
    plain = pipeline.generate("reverse", texts, opts)
    cut = pipeline.generate("reverse", texts, opts, cancelled=cancelled)
    assert len(cut[4].tokens) <= 2 < len(plain[4].tokens)
    assert [c.text for c in cut[:4]] == [p.text for p in plain[:4]]


def test_a_running_batch_compacts_onto_the_grid(pipeline, recorded):
    batch = RunningBatch(pipeline.model, "reverse", SearchOptions())
    src, src_len = encode_texts(pipeline, INPUTS[:20])
    batch.join(src, src_len, list(range(20)))
    finished: list[int] = []
    joined = False
    while len(batch):
        finished += [f.key for f in batch.step()]
        if len(finished) >= 10 and len(batch) and not joined:
            more, more_len = encode_texts(pipeline, INPUTS[20:25])
            batch.join(more, more_len, list(range(20, 25)))  # 5 join the live ones
            joined = True
    assert sorted(finished) == list(range(25))
    sizes = [rows for rows, _, _ in recorded]
    assert sizes[0] == 20  # a first join is as large as it is
    assert set(sizes) <= GRID | {20} and len(set(sizes)) > 1, sizes
    assert all(width % shapes.WIDTH_MULTIPLE == 0 for _, width, _ in recorded)


@pytest.mark.parametrize("count", [1, 129, 300])
def test_shortlist_products_run_on_the_column_grid(count):
    torch.manual_seed(0)
    weight, bias, vector = torch.randn(1000, 16), torch.randn(1000), torch.randn(4, 16)
    columns = torch.randperm(1000)[:count].sort().values
    generator = ColumnGenerator(weight, bias, int8=False)
    with torch.profiler.profile(record_shapes=True) as prof:
        out = generator(vector, columns)
    products = [e.input_shapes for e in prof.events() if e.name == "aten::addmm"]
    assert products and all(inputs[2][1] == shapes.columns(count) for inputs in products)
    assert out.shape == (4, count)
    torch.testing.assert_close(out, vector @ weight[columns].T + bias[columns])


# ---- training: the output layer's rows and the sources' width -------------------------------


@pytest.mark.parametrize("copy", [False, True])
def test_training_runs_the_output_layer_on_the_token_grid(copy):
    from hanseq.engine.data import collate
    from hanseq.engine.vocabulary import PAD_ID

    model = tiny(copy=copy)
    sources = [[4, 5, 6, 20, 7], [8, 9, 21], [4, 4, 5, 6, 7, 8, 9, 22, 23]]
    targets = [[10, 11, 12, 2], [13, 2], [14, 15, 10, 11, 16, 2]]
    batch = collate(sources, targets)
    assert batch.src.size(1) == shapes.width(9) == 16  # the sources at the grid's width
    keep = batch.tgt_out != PAD_ID  # 12 real tokens
    rows: list[int] = []
    model.head("a").generator.register_forward_hook(lambda m, i, o: rows.append(i[0].size(0)))
    logits = model("a", batch.src, batch.src_len, batch.tgt_in, 1.0, keep)
    assert rows == [shapes.tokens(12)] == [64]
    assert logits.shape == (12, 20)  # the extra rows cut off before the loss
    # (that these are the real tokens' logits: tests/test_model.py, the kept positions)


def test_training_sources_off_the_grid_keep_their_length(grid_off):
    from hanseq.engine.data import collate

    batch = collate([[4, 5, 6], [7]], [[10, 2], [11, 2]])
    assert batch.src.size(1) == 3
    assert [shapes.tokens(n) for n in (1, 64, 65)] == [1, 64, 65]


def scheduled(model, gold: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    from hanseq.engine.heads import Seq2Seq

    head = model.head("a")
    src = torch.randint(4, 30, (gold.size(0), 6), generator=torch.Generator().manual_seed(1))
    memory, state = head.prepare(model.encode(src, torch.full((gold.size(0),), 6)))
    torch.manual_seed(seed)
    return Seq2Seq._scheduled_inputs(head, memory, state, gold, ratio)


def test_scheduled_sampling_predicts_on_the_grid_and_as_off_it(monkeypatch):
    from hanseq.engine.vocabulary import BOS_ID

    model = tiny(copy=True)
    head = model.head("a")
    gold = torch.randint(10, 20, (13, 7), generator=torch.Generator().manual_seed(2))
    gold[:, 0] = BOS_ID
    torch.manual_seed(5)
    own = torch.rand(gold.shape) >= 0.8  # the coins the pass tosses first
    own[:, 0] = False
    sizes: list[int] = []
    step, predict = head.decoder.step, head.predict
    monkeypatch.setattr(
        head.decoder, "step", lambda p, s, m: (sizes.append(p.size(0)), step(p, s, m))[1]
    )
    monkeypatch.setattr(
        head, "predict", lambda v, w, m, r: (sizes.append(r.numel()), predict(v, w, m, r))[1]
    )
    mixed = scheduled(model, gold, 0.8, seed=5)
    assert sizes and set(sizes) <= GRID, sizes
    assert torch.equal(mixed[~own], gold[~own])  # rows there for the size keep their gold
    assert not torch.equal(mixed, gold)
    monkeypatch.setattr(shapes, "ON", False)
    assert torch.equal(scheduled(model, gold, 0.8, seed=5), mixed)
