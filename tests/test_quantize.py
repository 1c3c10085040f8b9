"""int8 output layers: the same tokens as fp32 on the trained toy model, and the CLI flag."""

from __future__ import annotations

import copy
import json

import torch

from engine.pipeline import Pipeline
from engine.quantize import quantize_generators
from engine.search import SearchOptions
from engine.vocabulary import BOS_ID
from tests.conftest import encode_texts, reversal_pairs
from tests.test_cli import hanseq

INPUTS = [line.split("\t")[0] for line in reversal_pairs(100, seed=11)]


def int8_pipeline(toy_bundle) -> Pipeline:
    bundle = copy.deepcopy(toy_bundle)
    assert quantize_generators(bundle.model) == 1
    return Pipeline.from_bundle(bundle)


def test_int8_logits_stay_close_and_decode_the_same_text(toy_bundle):
    fp32, int8 = Pipeline.from_bundle(toy_bundle), int8_pipeline(toy_bundle)
    src, src_len = encode_texts(fp32, INPUTS)
    with torch.inference_mode():
        outputs = []
        for p in (fp32, int8):
            head = p.model.head("reverse")
            memory, state = head.prepare(p.model.encode(src, src_len))
            logits, _, _ = head.step(torch.full((len(INPUTS),), BOS_ID), state, memory)
            outputs.append(logits[:, : head.generator.weight.size(0)])
    spread = outputs[0].max() - outputs[0].min()
    # fbgemm quantizes weights and activations per tensor: the largest logit error measured
    # on this toy model is 4% of the logits' spread (PyTorch's init) to 6% (U(-0.1, 0.1)).
    assert (outputs[0] - outputs[1]).abs().max() < 0.08 * spread
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
