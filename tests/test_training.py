"""Training: multi-task heads, scheduled sampling, exact resume, checkpoint averaging."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hanseq.engine.bundle import WEIGHTS, load_bundle
from hanseq.engine.distributed import autocast_dtype
from hanseq.engine.precision import cpu_bf16_pays, cpu_has_bf16
from hanseq.engine.training import History, average_checkpoints, train
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


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_bf16_autocast_trains_on_any_cpu(toy_corpus, tmp_path, rnn):
    """``mixed_precision: bf16`` on a CPU: the path runs (emulated where the CPU lacks bf16,
    fast with AMX) and the loss is a number. The LSTM too: oneDNN has no bf16
    LSTM without bf16 units, so there the encoder's runs in fp32 (engine/encoders.py)."""
    cfg = toy_config(toy_corpus, tmp_path / "bf16", **{**SHORT, "mixed_precision": "bf16"})
    cfg.model.rnn = rnn
    train(cfg, resume=False)
    losses = [r["train_loss"] for r in log_of(tmp_path / "bf16") if r["event"] == "validation"]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)


def test_auto_precision_picks_bf16_only_where_the_cpu_has_amx(tmp_path):
    """bf16 autocast pays on AMX tiles only; AVX512-BF16 alone has the instructions (the
    encoder's bf16 LSTM runs) but a bf16 step measured slower than fp32 (bench/README.md)."""
    cpu = torch.device("cpu")
    for flags, has_bf16, pays in [
        ("fpu avx2 fma", False, False),
        ("fpu avx512f avx512_bf16", True, False),
        ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True, True),
    ]:
        info = tmp_path / f"cpuinfo-{len(flags)}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert (cpu_has_bf16(str(info)), cpu_bf16_pays(str(info))) == (has_bf16, pays)
    assert autocast_dtype("off", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) is None  # fp16 autocast is CUDA only
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if cpu_bf16_pays() else None)


def test_validation_decodes_with_the_weights_a_fused_optimizer_just_wrote(toy_bundle):
    """Fused Adam rewrites weights without bumping their version counters, so the generator's
    packed copy would go stale between validations; forget_packed() (which the trainer calls
    before each validation) makes decoding read the new weights."""
    import copy

    from hanseq.engine.vocabulary import BOS_ID

    model = copy.deepcopy(toy_bundle.model)
    head = model.head("reverse")
    src = torch.tensor([[5, 6, 7, 3]])
    prev = torch.full((1,), BOS_ID)

    def first_logits():
        with torch.inference_mode():
            memory, state = head.prepare(model.encode(src, torch.tensor([4])))
            return head.step(prev, state, memory)[0].clone()

    first_logits()  # packs the generator
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    fresh = copy.deepcopy(model)
    fresh.forget_packed()
    with torch.inference_mode():
        fh = fresh.head("reverse")
        memory, state = fh.prepare(fresh.encode(src, torch.tensor([4])))
        reference = fh.step(prev, state, memory)[0]
    model.forget_packed()
    torch.testing.assert_close(first_logits(), reference)
