"""int8 decoder products: close to fp32 and the same tokens on the trained toy model, an
LSTM cell close to fp32's, and the CLI flag."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.quantize import BACKENDS, Int8Linear, Int8LSTMCell, backend, quantize_decoders
from tests.conftest import first_step_logits, reversal_pairs
from tests.test_cli import hanseq

INPUTS = [line.split("\t")[0] for line in reversal_pairs(100, seed=11)]


def int8_pipeline(toy_bundle) -> Pipeline:
    bundle = copy.deepcopy(toy_bundle)
    assert quantize_decoders(bundle.model) == 1
    return Pipeline.from_bundle(bundle)


def test_int8_logits_stay_close_and_decode_the_same_text(toy_bundle):
    fp32, int8 = Pipeline.from_bundle(toy_bundle), int8_pipeline(toy_bundle)
    outputs = [first_step_logits(p, "reverse", INPUTS) for p in (fp32, int8)]
    spread = outputs[0].max() - outputs[0].min()
    # Per-row weights, 7-bit activations: the largest logit error measured on this toy model
    # is 0.5% of the logits' spread (the older fbgemm functions, saturating on AVX2: 6%).
    assert (outputs[0] - outputs[1]).abs().max() < 0.015 * spread
    assert torch.equal(outputs[0].argmax(-1), outputs[1].argmax(-1))
    for opts in (SearchOptions(), SearchOptions(beam_size=4)):
        a = [g.text for g in fp32.generate("reverse", INPUTS, opts)]
        b = [g.text for g in int8.generate("reverse", INPUTS, opts)]
        assert sum(x == y for x, y in zip(a, b, strict=True)) >= 0.97 * len(INPUTS)


def test_eval_takes_int8(toy_bundle_path, toy_corpus):
    data = str(toy_corpus / "valid.tsv")
    done = hanseq(
        "eval", "--model", str(toy_bundle_path), "--task", "reverse", "--data", data, "--int8"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bleu"] > 90


def test_the_int8_lstm_cell_follows_the_fp32_cell():
    """The toy model is a GRU (its decoder keeps fp32 cells); an LSTM's cell goes int8. Its
    inputs here are what a decoder's are: embeddings and tanh outputs within (-1, 1), weights
    from U(-0.1, 0.1) (engine.heads.initialize)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(48, 32)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    weights = [getattr(lstm, f"{n}_l0").detach().uniform_(-0.1, 0.1) for n in names]
    cell = Int8LSTMCell(*weights)
    x, h, c = torch.rand(64, 48) * 2 - 1, torch.rand(64, 32) * 2 - 1, torch.randn(64, 32)
    want_h, want_c = torch.lstm_cell(x, (h, c), *weights)
    got_h, got_c = cell(x, h, c)

    # measured max errors 0.0025 (h) and 0.0047 (c), on values of about +-1
    assert (got_h - want_h).abs().max() < 0.01
    assert (got_c - want_c).abs().max() < 0.015


@pytest.mark.parametrize("engine", BACKENDS)
def test_an_int8_row_gets_the_same_output_whatever_its_neighbours(engine):
    """Activations are quantized per row: a row's result does not depend on the batch.
    fbgemm: bit for bit; oneDNN's kernels for other batch sizes round the dequantized sum
    differently (measured 6e-8 on an AMX CPU, where fp32's own products moved a row by 3e-5);
    a shared activation scale moved rows by percents."""
    torch.manual_seed(0)
    weight, bias = torch.empty(96, 48).uniform_(-0.1, 0.1), torch.randn(96) * 0.1
    layer = Int8Linear(weight, bias, engine=engine)
    row = torch.randn(1, 48)
    alone = layer(row)
    for neighbours in (torch.randn(7, 48) * 10, torch.randn(30, 48) * 0.01, torch.zeros(3, 48)):
        batch = torch.cat([neighbours[:2], row, neighbours[2:]])
        if engine == "fbgemm":
            assert torch.equal(layer(batch)[2:3], alone)
        else:
            assert (layer(batch)[2:3] - alone).abs().max() < 1e-6 * alone.abs().max()
    exact = row @ weight.T + bias
    assert (alone - exact).abs().max() < 0.02 * exact.abs().max()
    assert torch.equal(layer(torch.zeros(2, 48)), bias.expand(2, -1))  # zero rows: just bias


@pytest.mark.parametrize("engine", BACKENDS)
def test_both_int8_engines_stay_close_to_fp32(engine):
    """fbgemm (7-bit activations) and oneDNN (8-bit where the CPU accumulates in 32 bits, VNNI
    or AMX; 7-bit elsewhere) on any x86 CPU; the default is the CPU's faster one
    (``backend()``: oneDNN with AMX int8 tiles)."""
    torch.manual_seed(1)
    weight, bias = torch.empty(300, 64).uniform_(-0.1, 0.1), torch.randn(300) * 0.1
    x = torch.randn(64, 64)
    exact = x @ weight.T + bias
    layer = Int8Linear(weight, bias, engine=engine)
    got = layer(x)
    # measured max errors 0.9% (8-bit, oneDNN on AMX) and 1.4% (7-bit) of the outputs' range
    assert (got - exact).abs().max() < (0.025 if layer.reduce_range else 0.015) * exact.abs().max()
    assert backend() in BACKENDS
    with pytest.raises(ValueError, match="int8 engine must be one of fbgemm, onednn"):
        Int8Linear(weight, bias, engine="qnnpack")
