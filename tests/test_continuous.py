"""Continuous batching on the trained toy model: rows that join a running batch late, leave it
early or share it with longer inputs decode exactly what they decode alone."""

from __future__ import annotations

import pytest
import torch

from hanseq.engine.continuous import RunningBatch
from hanseq.engine.options import InvalidOptions, SearchOptions
from hanseq.engine.pipeline import Pipeline
from tests.conftest import encode_texts, reversal_pairs

INPUTS = [line.split("\t")[0] for line in reversal_pairs(30, seed=21)]


def _alone(pipeline, text, opts):
    running = RunningBatch(pipeline.model, "reverse", opts)
    running.join(*encode_texts(pipeline, [text]), [0])
    while True:
        done = running.step()
        if done:
            return done[0].hypothesis


@pytest.mark.parametrize(
    "opts",
    [
        SearchOptions(),
        SearchOptions(sampling=True, top_k=4, temperature=1.3, seed=5),
        SearchOptions(no_repeat_ngram=2, min_length=2, return_attention=True),
    ],
)
def test_rows_joining_at_every_step_decode_as_if_alone(pipeline, opts):
    """One input joins before each step, so every row shares its steps with rows that are
    further along, and memory widths change as long and short inputs come and go."""
    running = RunningBatch(pipeline.model, "reverse", opts)
    found = {}
    pending = list(enumerate(INPUTS))
    while pending or running:
        if pending:
            key, text = pending.pop(0)
            running.join(*encode_texts(pipeline, [text]), [key])
        for done in running.step():
            assert not done.cancelled
            found[done.key] = done.hypothesis
    assert sorted(found) == list(range(len(INPUTS)))
    for key, text in enumerate(INPUTS):
        alone = _alone(pipeline, text, opts)
        assert found[key].tokens == alone.tokens
        assert found[key].score == pytest.approx(alone.score, abs=1e-4)
        if opts.return_attention:
            assert found[key].attention.shape == alone.attention.shape
            assert torch.allclose(found[key].attention, alone.attention, atol=1e-5)


def test_a_cancelled_row_leaves_with_what_it_has(pipeline):
    running = RunningBatch(pipeline.model, "reverse", SearchOptions())
    running.join(*encode_texts(pipeline, INPUTS[:3]), [10, 11, 12])
    first = running.step()
    running.cancel([11])
    left = running.step() + first
    gone = [d for d in left if d.key == 11]
    assert len(gone) == 1 and gone[0].cancelled and len(gone[0].hypothesis.tokens) == 2
    assert 11 not in running.keys and len(running) == 2 - sum(d.key != 11 for d in left)


def test_pipeline_refills_a_small_batch_and_keeps_order(pipeline):
    """batch_size 4 over 30 inputs: most of them join a batch that is already running."""
    small = Pipeline(pipeline.model, pipeline.source, pipeline.targets, batch_size=4)
    wide = pipeline.generate("reverse", INPUTS)
    assert [g.text for g in small.generate("reverse", INPUTS)] == [g.text for g in wide]


def test_beam_is_refused(pipeline):
    with pytest.raises(InvalidOptions, match="beam_size"):
        RunningBatch(pipeline.model, "reverse", SearchOptions(beam_size=2))


@pytest.mark.parametrize("opts", [SearchOptions(), SearchOptions(sampling=True, seed=3)])
def test_ended_rows_stay_masked_until_half_are_dead(pipeline, opts):
    """Rows leave at once but their tensors go only when enough are dead (one copy of the
    memory instead of one per ending), and every row decodes what it decodes alone."""
    running = RunningBatch(pipeline.model, "reverse", opts)
    running.join(*encode_texts(pipeline, INPUTS[:12]), list(range(12)))
    found, sizes = {}, []
    while running:
        for done in running.step():
            found[done.key] = done.hypothesis
        sizes.append((len(running), len(running._keys)))
    assert any(live < rows for live, rows in sizes)  # dead rows were kept for a while
    assert all(rows - live < max(1, 0.5 * rows) or live == 0 for live, rows in sizes)
    for key, text in enumerate(INPUTS[:12]):
        alone = _alone(pipeline, text, opts)
        # scores to 2e-4: on an AVX-512 CPU fp32's own products round a row by the batch's
        # shape (3e-5 on logits, 6e-5 on a six-token score, measured on an Intel Xeon)
        assert found[key].tokens == alone.tokens and found[key].score == pytest.approx(
            alone.score, abs=2e-4
        )
