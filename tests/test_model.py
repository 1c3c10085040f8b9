"""Encoder, attention, decoder and heads: shapes, masking, padding invariance."""

from __future__ import annotations

import pytest
import torch

from hanseq.engine.attention import build_attention
from hanseq.engine.config import ConfigurationError, ModelConfig
from hanseq.engine.heads import build_model
from hanseq.engine.vocabulary import BOS_ID, PAD_ID

VARIANTS = [
    dict(rnn="lstm", attention="general"),
    dict(rnn="gru", attention="bahdanau"),
    dict(rnn="lstm", attention="dot", peeky=True),
    dict(rnn="gru", attention="general", input_feeding=False, encoder_layers=2, decoder_layers=2),
    dict(rnn="lstm", attention="bahdanau", bidirectional=False, tie_embeddings=False),
    dict(rnn="lstm", attention="general", copy=True),
]


def tiny(**overrides):
    cfg = ModelConfig(embedding_dim=16, hidden_size=24, dropout=0.0, **overrides)
    torch.manual_seed(0)
    sizes = {"a": 20, "b": 25}
    maps = {t: torch.arange(30).where(torch.arange(30) < n, -1) for t, n in sizes.items()}
    return build_model(cfg, src_vocab=30, tgt_vocabs=sizes, copy_maps=maps).eval()


def batch(pad_to: int):
    rows = [[5, 6, 7, 8, 3], [9, 10, 3]]
    src = torch.full((2, pad_to), PAD_ID)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    return src, torch.tensor([len(r) for r in rows])


def decode_steps(model, task, src, src_len, steps=4):
    head = model.head(task)
    memory, state = head.prepare(model.encode(src, src_len))
    prev = torch.full((src.size(0),), BOS_ID)
    logits, weights = [], []
    for _ in range(steps):
        out, state, w = head.step(prev, state, memory)
        logits.append(out)
        weights.append(w)
        prev = out.argmax(-1)
    return torch.stack(logits, 1), torch.stack(weights, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_is_exactly_zero_on_padding(variant):
    model = tiny(**variant)
    src, src_len = batch(pad_to=9)
    _, weights = decode_steps(model, "a", src, src_len)
    assert torch.all(weights[1, :, 3:] == 0.0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_more_padding_changes_nothing(variant):
    model = tiny(**variant)
    short_logits, short_w = decode_steps(model, "b", *batch(pad_to=5))
    long_logits, long_w = decode_steps(model, "b", *batch(pad_to=12))
    assert torch.allclose(short_logits, long_logits, atol=1e-5)
    assert torch.allclose(short_w, long_w[:, :, :5], atol=1e-6)


def test_training_forward_shapes_and_heads_share_the_encoder():
    model = tiny()
    src, src_len = batch(pad_to=6)
    tgt = torch.tensor([[BOS_ID, 5, 6], [BOS_ID, 7, PAD_ID]])
    assert model("a", src, src_len, tgt).shape == (2, 3, 20)
    assert model("b", src, src_len, tgt, gold_ratio=0.5).shape == (2, 3, 25)
    assert model.tasks == ["a", "b"]
    assert model.heads["a"].generator.weight is model.heads["a"].decoder.embed.weight


@pytest.mark.parametrize("scale", [0.1, 0.05])
def test_init_scale_bounds_every_weight_and_zeroes_padding(scale):
    model = tiny(init_scale=scale)
    for name, param in model.named_parameters():
        assert param.abs().max() <= scale, name
        assert param.abs().max() > scale / 2, name  # drawn, not left at a default
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and all(not e.weight[PAD_ID].any() for e in embeddings)


def test_init_scale_zero_keeps_pytorchs_defaults():
    embed = tiny(init_scale=0.0).encoder.embed.weight
    assert embed.abs().max() > 1.0  # N(0, 1), not U(-0.1, 0.1)


def test_unknown_head_lists_the_known_ones():
    with pytest.raises(KeyError, match="a, b"):
        tiny().head("summarize")


def test_dot_attention_needs_equal_sizes():
    with pytest.raises(ConfigurationError, match="general or bahdanau"):
        build_attention("dot", query_size=8, key_size=16)
    with pytest.raises(ConfigurationError, match="valid: dot, general, bahdanau"):
        build_attention("cosine", 8, 8)


@pytest.mark.parametrize("copy", [False, True])
def test_scheduled_sampling_at_ratio_zero_feeds_the_models_own_greedy_output(copy):
    """Every input after BOS is the model's previous prediction: free-running greedy decoding
    (padding stays padding); at ratio 1 the inputs are the gold ones."""
    model = tiny(copy=copy)
    src, src_len = batch(pad_to=5)
    gold = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 8, PAD_ID, PAD_ID]])
    head = model.head("a")
    memory, state = head.prepare(model.encode(src, src_len))
    torch.manual_seed(1)
    mixed = model._scheduled_inputs(head, memory, state, gold, gold_ratio=0.0)
    logits, _ = decode_steps(model, "a", src, src_len, steps=3)
    greedy = logits.argmax(-1)
    assert torch.equal(mixed[0, 1:], greedy[0])
    assert mixed[1, 1] == greedy[1, 0] and torch.all(mixed[1, 2:] == PAD_ID)
    assert torch.equal(model._scheduled_inputs(head, memory, state, gold, 1.0), gold)


@pytest.mark.parametrize("copy", [False, True])
def test_training_logits_of_the_kept_positions_are_those_of_the_full_pass(copy):
    model = tiny(copy=copy)
    src, src_len = batch(pad_to=6)
    tgt = torch.tensor([[BOS_ID, 5, 6], [BOS_ID, 7, PAD_ID]])
    keep = tgt != PAD_ID
    full = model("a", src, src_len, tgt)
    assert torch.allclose(model("a", src, src_len, tgt, keep=keep), full[keep], atol=1e-6)


@pytest.mark.parametrize("variant", [*VARIANTS, dict(copy=True, peeky=True, attention="bahdanau")])
@pytest.mark.parametrize("shortlist", [False, True])
def test_rows_sharing_a_source_step_as_over_copies_of_it(variant, shortlist):
    """Beam search gives each source k decoder rows over one memory row: every step must
    equal the step over k copies of the memory (the copy mass and ids, the peeky summary and
    each row's shortlist mask go with them)."""
    from hanseq.engine.shortlist import LexicalTable

    model = tiny(**variant)
    head = model.head("a")
    if shortlist:
        table = torch.randint(4, 20, (30, 3))
        head.lexicon = LexicalTable(table, torch.arange(6))
    src, src_len = batch(pad_to=6)
    k = 3
    with torch.inference_mode():
        memory, state = head.prepare(model.encode(src, src_len), shortlist=shortlist)
        rows = torch.arange(2).repeat_interleave(k)
        state = state.index_select(rows)
        copies = memory.index_select(rows)
        prev = torch.tensor([BOS_ID, 7, 9, BOS_ID, 12, 4])
        shared_state, copied_state = state, state
        for _ in range(3):
            shared, shared_state, w1 = head.step(prev, shared_state, memory)
            copied, copied_state, w2 = head.step(prev, copied_state, copies)
            assert torch.allclose(shared, copied, atol=1e-5, equal_nan=True)
            assert torch.allclose(w1, w2, atol=1e-6)
            prev = memory.token_ids(shared.argmax(-1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_pass_equals_stepping_through_the_gold_inputs(variant):
    """unroll (training: an LSTM's embedding gates in one product for all steps) gives the
    logits that step() gives fed the same inputs one at a time."""
    model = tiny(**variant)
    src, src_len = batch(pad_to=5)
    tgt = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 8, 9, PAD_ID]])
    full = model("a", src, src_len, tgt)
    head = model.head("a")
    memory, state = head.prepare(model.encode(src, src_len))
    for t in range(tgt.size(1)):
        out, state, _ = head.step(tgt[:, t], state, memory)
        assert torch.allclose(head.log_probs(out), head.log_probs(full[:, t]), atol=1e-5)
