"""The decoding number formats: what ``auto`` picks per CPU (and says why), bf16 decoding
close to fp32 on any machine (emulated where the CPU lacks bf16 units, as here maybe), the
setting, the CLI flag, and a server decoding in bf16."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import grpc
import pytest
import torch

from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.precision import Choice, choose, cpu_info, describe_cpu, prepare
from hanseq.service.server import create_app
from hanseq.service.settings import load_settings
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import first_step_logits, reversal_pairs, settings_for
from tests.test_cli import hanseq

INPUTS = [line.split("\t")[0] for line in reversal_pairs(60, seed=17)]
AMX = "fpu avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8"


def fake_cpuinfo(tmp_path: Path, flags: str, model: str = "Test CPU") -> str:
    path = tmp_path / f"cpuinfo-{model.replace(' ', '-')}"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n")
    return str(path)


def test_auto_picks_bf16_only_where_the_cpu_has_amx(tmp_path):
    amx = fake_cpuinfo(tmp_path, AMX, "Intel Xeon")
    assert choose("auto", "cpu", amx).precision == "bf16"
    assert choose("auto", "cpu", amx).why == "auto: amx_bf16 present"
    # AVX512-BF16 without AMX: bf16 products measured slower than fp32 (bench/README.md)
    vector_bf16 = fake_cpuinfo(tmp_path, "fpu avx2 avx512f avx512_bf16 avx512_vnni", "Xeon VM")
    assert choose("auto", "cpu", vector_bf16) == Choice(
        "fp32", "auto: avx512_bf16 without amx_bf16 (bf16 runs slower than fp32)"
    )
    assert choose("bf16", "cpu", vector_bf16).precision == "bf16"
    avx2 = fake_cpuinfo(tmp_path, "fpu avx2 fma", "AMD EPYC")
    assert choose("auto", "cpu", avx2).precision == "fp32"
    assert "bf16 would be emulated" in choose("auto", "cpu", avx2).why
    assert choose("int8", "cpu", avx2).precision == "int8"
    assert choose("bf16", "cpu", avx2).precision == "bf16"  # asked: runs anywhere
    assert choose("auto", "cuda:0", avx2).precision == "fp16"
    with pytest.raises(ValueError, match="int8 decoding is for CPUs"):
        choose("int8", "cuda", avx2)
    with pytest.raises(ValueError, match="must be one of auto, fp32, bf16, int8"):
        choose("fp8", "cpu", avx2)
    assert cpu_info(avx2) == ("AMD EPYC", {"fpu", "avx2", "fma"})
    assert describe_cpu(amx) == (
        "Intel Xeon (avx2, avx512f, avx512_bf16, avx512_vnni, amx_bf16, amx_int8, amx_tile)"
    )
    assert describe_cpu(str(tmp_path / "none")) == "unknown CPU (no AVX2)"


def test_bf16_logits_stay_close_and_decode_the_same_text(toy_bundle):
    fp32 = Pipeline.from_bundle(toy_bundle)
    bundle = copy.deepcopy(toy_bundle)
    prepare(bundle.model, "bf16")
    bf16 = Pipeline.from_bundle(bundle)
    assert next(bundle.model.parameters()).dtype == torch.bfloat16
    outputs = [first_step_logits(p, "reverse", INPUTS) for p in (fp32, bf16)]
    spread = outputs[0].max() - outputs[0].min()
    assert (outputs[0] - outputs[1]).abs().max() < 0.03 * spread  # bf16: 8 bits of mantissa
    for opts in (SearchOptions(), SearchOptions(beam_size=4, length_penalty=1.0)):
        a = fp32.generate("reverse", INPUTS, opts)
        b = bf16.generate("reverse", INPUTS, opts)
        same = sum(x.text == y.text for x, y in zip(a, b, strict=True))
        assert same >= 0.95 * len(INPUTS)
        assert all(isinstance(g.score, float) and g.score == g.score for g in b)  # no NaN


def test_the_setting_is_checked():
    with pytest.raises(Exception, match="cpu_precision .* must be auto, fp32, bf16 or int8"):
        load_settings({"cpu_precision": "fp16"}, env={})
    with pytest.raises(Exception, match="cpu_int8 asks for int8 but cpu_precision is bf16"):
        load_settings({"cpu_precision": "bf16", "cpu_int8": True}, env={})
    assert load_settings({}, env={}).cpu_precision == "auto"


def test_eval_takes_a_precision(toy_bundle_path, toy_corpus):
    data = str(toy_corpus / "valid.tsv")
    for precision in ("bf16", "auto"):
        done = hanseq(
            "eval", "--model", str(toy_bundle_path), "--task", "reverse", "--data", data,
            "--precision", precision,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["bleu"] > 85
    assert "decoding in " in done.stderr and "auto:" in done.stderr  # auto says what it chose


async def test_a_server_decodes_in_bf16(service_bundle_path):
    app = await create_app(settings_for(service_bundle_path, cpu_precision="bf16"))
    try:
        assert {w.precision for w in app.models.workers()} == {"bf16"}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
            reply = await stub.Translate(pb.TranslateRequest(text=INPUTS[0]))
            beams = await stub.Translate(
                pb.TranslateRequest(text=INPUTS[1], options=pb.DecodingOptions(beam_size=3))
            )
        assert reply.text and beams.text
    finally:
        await app.stop()
