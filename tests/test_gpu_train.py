"""bench/gpu_train.py, the prepared GPU run, in the parts that run anywhere: the config it
derives, the kit's trimmed tarballs, and the bundle's way back in parts (the CPU try of the
whole run, ~6 minutes, is in bench/README.md)."""

from __future__ import annotations

import tarfile

import pytest
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import load_config
from tests.conftest import REPO, bench_module

gpu_train = bench_module("gpu_train")


def test_the_gpu_config_keeps_the_schedules_in_sentences(tmp_path):
    path = gpu_train.gpu_config(REPO / "configs/multitask.yaml", tmp_path, 5.5, 256, "cuda")
    shipped = yaml.safe_load((REPO / "configs/multitask.yaml").read_text())["training"]
    cfg = load_config(path)  # valid as a config, as the trainer reads it
    t = cfg.training
    assert (t.batch_size, t.max_minutes, t.device) == (256, 5.5, "cuda")
    assert t.warmup_steps * 256 == shipped["warmup_steps"] * shipped["batch_size"]
    assert t.teacher_forcing.steps * 4 == shipped["teacher_forcing"]["steps"]
    assert t.valid_every * 4 == shipped["valid_every"]
    assert t.output_dir == str(tmp_path / "run") and not t.progress
    assert cfg.model == load_config(REPO / "configs/multitask.yaml").model  # the shipped shape


def test_the_kit_leaves_out_what_mecab_never_reads(tmp_path):
    package = tmp_path / "konlpy"
    (package / "java").mkdir(parents=True)
    (package / "java" / "big.jar").write_bytes(b"x" * 1000)
    (package / "tag.py").write_text("pass\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "tag.pyc").write_bytes(b"x")
    gpu_train._tar_xz(tmp_path / "site.tar.xz", {"konlpy": package})
    with tarfile.open(tmp_path / "site.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["konlpy", "konlpy/tag.py"]


@pytest.mark.parametrize("part_bytes", [10**9, 40_000])
def test_a_bundle_travels_in_parts_and_comes_back_verified(
    toy_bundle_path, tmp_path, monkeypatch, part_bytes
):
    monkeypatch.setattr(gpu_train, "PART_BYTES", part_bytes)
    parts = gpu_train.pack(toy_bundle_path, tmp_path / "out")
    assert all(p.stat().st_size <= part_bytes for p in parts)
    assert (len(parts) > 1) == (part_bytes < 10**9)
    gpu_train.unpack(tmp_path / "out", tmp_path / "back")
    original, back = load_bundle(toy_bundle_path), load_bundle(tmp_path / "back")
    assert back.manifest == original.manifest


def test_a_missing_part_is_an_error_not_a_broken_bundle(toy_bundle_path, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_train, "PART_BYTES", 40_000)
    parts = gpu_train.pack(toy_bundle_path, tmp_path / "out")
    parts[len(parts) // 2].unlink()
    with pytest.raises(SystemExit, match=f"{len(parts) - 1} of {len(parts)} parts"):
        gpu_train.unpack(tmp_path / "out", tmp_path / "back")
    assert not (tmp_path / "back").exists()
