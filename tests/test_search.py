"""Search on the trained toy model: greedy, beam, sampling and their guarantees."""

from __future__ import annotations

import pytest
import torch

from hanseq.engine.options import InvalidOptions, SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.search import search
from hanseq.engine.vocabulary import EOS_ID
from tests.conftest import encode_texts, reversal_pairs

INPUTS = [line.split("\t")[0] for line in reversal_pairs(40, seed=7)]


def test_learned_the_toy_task(pipeline):
    """Held-out inputs of the training distribution (3-7 words), exact match."""
    held_out = [line.split("\t") for line in reversal_pairs(300, seed=99)]
    outputs = pipeline.generate("reverse", [source for source, _, _ in held_out])
    exact = sum(o.text == t for o, (_, t, _) in zip(outputs, held_out, strict=True))
    assert exact / len(held_out) >= 0.95


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_never_scores_below_greedy(pipeline, alpha):
    src, src_len = encode_texts(pipeline, INPUTS)
    greedy = search(pipeline.model, "reverse", src, src_len, SearchOptions(length_penalty=alpha))
    beam = search(
        pipeline.model, "reverse", src, src_len, SearchOptions(beam_size=5, length_penalty=alpha)
    )
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].score >= g[0].score - 1e-4


def test_beam_one_is_greedy(pipeline):
    greedy = pipeline.generate("reverse", INPUTS, SearchOptions())
    beam1 = pipeline.generate("reverse", INPUTS, SearchOptions(beam_size=1, n_best=1))
    assert [(g.text, round(g.score, 4)) for g in greedy] == [
        (b.text, round(b.score, 4)) for b in beam1
    ]


@pytest.mark.parametrize("opts", [SearchOptions(), SearchOptions(beam_size=4)])
def test_batched_equals_one_by_one(pipeline, opts):
    batched = pipeline.generate("reverse", INPUTS, opts)
    alone = [pipeline.generate("reverse", [t], opts)[0] for t in INPUTS]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert [b.score for b in batched] == pytest.approx([a.score for a in alone], abs=1e-4)


def test_n_best_is_sorted_and_distinct(pipeline):
    out = pipeline.generate("reverse", INPUTS[:5], SearchOptions(beam_size=5, n_best=4))
    for gen in out:
        scores = [gen.score] + [s for _, s in gen.alternatives]
        texts = [gen.text] + [t for t, _ in gen.alternatives]
        assert len(texts) == 4 and len(set(texts)) == 4
        assert scores == sorted(scores, reverse=True)


def test_min_and_max_length(pipeline):
    src, src_len = encode_texts(pipeline, INPUTS[:8])
    short = search(pipeline.model, "reverse", src, src_len, SearchOptions(max_length=2))
    assert all(len(h[0].tokens) <= 1 for h in short)
    long = search(
        pipeline.model, "reverse", src, src_len, SearchOptions(min_length=12, beam_size=3)
    )
    assert all(len(h[0].tokens) >= 12 for h in long)


@pytest.mark.parametrize("beam", [1, 3])
def test_no_repeat_ngram(pipeline, beam):
    src, src_len = encode_texts(pipeline, ["사과 사과 사과 사과 바다 사과 사과"])
    opts = SearchOptions(beam_size=beam, no_repeat_ngram=1)
    tokens = search(pipeline.model, "reverse", src, src_len, opts)[0][0].tokens
    assert len(tokens) == len(set(tokens)) and EOS_ID not in tokens


def test_sampling_is_reproducible_and_batch_invariant(pipeline):
    opts = SearchOptions(sampling=True, temperature=1.5, top_k=5, top_p=0.9, seed=11)
    first = [g.text for g in pipeline.generate("reverse", INPUTS, opts)]
    again = [g.text for g in pipeline.generate("reverse", INPUTS, opts)]
    alone = [pipeline.generate("reverse", [t], opts)[0].text for t in INPUTS[:10]]
    assert first == again
    assert first[:10] == alone
    hot = SearchOptions(sampling=True, temperature=5.0, seed=1)
    assert [g.text for g in pipeline.generate("reverse", INPUTS, hot)] != first


def test_attention_comes_back_with_the_right_shape(pipeline):
    for opts in [
        SearchOptions(return_attention=True),
        SearchOptions(beam_size=3, return_attention=True),
    ]:
        gen = pipeline.generate("reverse", ["사과 바다 하늘"], opts)[0]
        assert gen.attention is not None
        attn = torch.tensor(gen.attention)
        assert attn.shape == (len(gen.tokens) + 1, len(gen.source_tokens) + 1)
        assert torch.allclose(attn.sum(-1), torch.ones(attn.size(0)), atol=1e-5)
        # reversal: the first output word attends to the last input word most
        assert int(attn[0].argmax()) == len(gen.source_tokens) - 1


def test_empty_input_gives_empty_output(pipeline):
    out = pipeline.generate("reverse", ["", "사과 바다 하늘", "   "])
    assert out[0].text == "" and out[2].text == "" and out[1].text == "하늘 바다 사과"


@pytest.mark.parametrize(
    "opts, field",
    [
        (SearchOptions(beam_size=0), "beam_size"),
        (SearchOptions(beam_size=2, n_best=3), "n_best"),
        (SearchOptions(top_p=0.0), "top_p"),
        (SearchOptions(sampling=True, beam_size=4), "sampling"),
        (SearchOptions(min_length=5, max_length=5), "min_length"),
    ],
)
def test_bad_options_name_the_field(pipeline, opts, field):
    with pytest.raises(InvalidOptions, match=field):
        pipeline.generate("reverse", ["사과"], opts)


def test_long_input_is_truncated_with_a_count_not_a_crash(toy_bundle, caplog):
    pipeline = Pipeline.from_bundle(toy_bundle)
    pipeline.max_source_length = 5
    out = pipeline.generate("reverse", ["사과 바다 하늘 학교 친구 음악 시간", "사과 바다"])
    assert out[0].truncated and len(out[0].source_tokens) == 4 and not out[1].truncated
    assert "1 input(s) longer than 5 tokens were truncated" in caplog.text


@pytest.mark.parametrize(
    "opts, leave_at",
    [(SearchOptions(), 2), (SearchOptions(beam_size=3), 1), (SearchOptions(beam_size=3), 3)],
)
def test_a_cancelled_row_stops_and_the_others_are_unchanged(pipeline, opts, leave_at):
    texts = INPUTS[:6]
    calls = {"n": 0}

    def cancelled():  # asked once per decoding step; input 2's caller leaves at step leave_at
        calls["n"] += 1
        return [i == 2 and calls["n"] >= leave_at for i in range(len(texts))]

    plain = pipeline.generate("reverse", texts, opts)
    cut = pipeline.generate("reverse", texts, opts, cancelled=cancelled)
    assert len(cut[2].tokens) <= leave_at < len(plain[2].tokens)
    assert [c.text for i, c in enumerate(cut) if i != 2] == [
        p.text for i, p in enumerate(plain) if i != 2
    ]


def test_partial_outputs_grow_to_the_final_text(pipeline):
    seen: dict[int, list[str]] = {}
    opts = SearchOptions(sampling=True, seed=3, top_k=3)
    out = pipeline.generate(
        "reverse", INPUTS[:4], opts, on_partial=lambda i, text: seen.setdefault(i, []).append(text)
    )
    for i, gen in enumerate(out):
        assert seen[i][-1] == gen.text
        assert all(b.startswith(a) for a, b in zip(seen[i], seen[i][1:], strict=False))
        assert len(seen[i]) == len(gen.tokens)
