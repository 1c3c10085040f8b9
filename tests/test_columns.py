"""The shortlist generator packed incrementally (engine/columns.py): the same logits as the
columns gathered afresh, whatever sets came before, and only the new columns packed."""

import pytest
import torch

from hanseq.engine import quantize
from hanseq.engine.columns import ColumnGenerator
from hanseq.engine.quantize import Int8Linear, backend

VOCAB, SIZE = 600, 32


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.empty(VOCAB, SIZE).uniform_(-0.1, 0.1), torch.randn(VOCAB) * 0.01


def _columns(*ranges) -> torch.Tensor:
    ids = torch.cat([torch.arange(a, b) for a, b in ranges])
    return torch.unique(ids)  # sorted, as RowShortlist's


def test_fp32_matches_the_columns_gathered_afresh(linear):
    weight, bias = linear
    gen = ColumnGenerator(weight, bias, int8=False)
    x = torch.randn(5, SIZE)
    for cols in (_columns((0, 100)), _columns((0, 120), (300, 340)), _columns((50, 110))):
        expected = x @ weight[cols].t() + bias[cols]
        assert torch.allclose(gen(x, cols), expected, atol=1e-6)


def test_only_the_missing_columns_are_packed(linear):
    weight, bias = linear
    gen = ColumnGenerator(weight, bias, int8=False, slack=1.5, max_parts=4)  # int8's defaults
    x = torch.randn(2, SIZE)
    first, second = _columns((0, 100)), _columns((0, 100), (200, 230))
    gen(x, first)
    gen(x, second)
    assert len(gen.parts) == 2 and gen.held.numel() == 130  # 100 kept + 30 new
    gen(x, _columns((10, 100)))  # a subset within the slack: nothing packed
    assert len(gen.parts) == 2
    gen(x, _columns((60, 80)))  # 130 held for 20 asked: past the slack, packed afresh
    assert len(gen.parts) == 1 and gen.held.numel() == 20


def test_parts_are_bounded(linear):
    weight, bias = linear
    gen = ColumnGenerator(weight, bias, int8=False, slack=100, max_parts=3)
    x = torch.randn(2, SIZE)
    for end in (100, 110, 120, 130):  # each adds 10 columns: the fourth part repacks
        cols = _columns((0, end))
        assert torch.allclose(gen(x, cols), x @ weight[cols].t() + bias[cols], atol=1e-6)
    assert len(gen.parts) == 1 and gen.held.numel() == 130


def test_fp32_gathers_each_new_set_whole_by_default(linear):
    weight, bias = linear
    gen = ColumnGenerator(weight, bias, int8=False)
    x = torch.randn(2, SIZE)
    for cols in (_columns((0, 100)), _columns((0, 100), (200, 230)), _columns((10, 100))):
        assert torch.allclose(gen(x, cols), x @ weight[cols].t() + bias[cols], atol=1e-6)
        assert len(gen.parts) == 1 and torch.equal(gen.held, cols)


def test_same_columns_tensor_is_not_looked_up_again(linear):
    weight, bias = linear
    gen = ColumnGenerator(weight, bias, int8=False)
    cols = _columns((0, 50), (400, 420))
    x = torch.randn(3, SIZE)
    gen(x, cols)
    gen.where.fill_(-7)  # a lookup now would fail; the kept gather index is used instead
    assert torch.allclose(gen(x, cols), x @ weight[cols].t() + bias[cols], atol=1e-6)


@pytest.mark.skipif(not quantize.available(), reason="no int8 engine in this torch build")
def test_int8_logits_do_not_depend_on_what_was_packed_before(linear):
    """One grid for every column: a column's logits are the same (fbgemm: bit for bit)
    whichever part holds it and whichever other columns share the batch."""
    weight, bias = linear
    x = torch.randn(4, SIZE)
    target = _columns((100, 160))
    scale = float(weight.abs().max()) / 127
    alone = Int8Linear(weight[target], bias[target], per_row=False, scale=scale)(x)
    histories = [[], [_columns((0, 130))], [_columns((150, 200)), _columns((90, 120))]]
    for history in histories:
        gen = ColumnGenerator(weight, bias, int8=True, slack=100)
        for cols in history:
            gen(x, cols)
        if backend() == "fbgemm":
            assert torch.equal(gen(x, target), alone)
        else:  # oneDNN's kernels round the dequantized sums by shape (tests/test_quantize.py)
            assert (gen(x, target) - alone).abs().max() < 1e-6 * alone.abs().max()
    assert torch.allclose(alone, x @ weight[target].t() + bias[target], atol=0.02)
