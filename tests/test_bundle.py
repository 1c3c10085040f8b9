"""Bundles: save -> load gives identical outputs; damaged or mismatched bundles are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hanseq.engine.bundle import MANIFEST, WEIGHTS, BundleError, load_bundle, save_bundle
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from tests.conftest import reversal_pairs

INPUTS = [line.split("\t")[0] for line in reversal_pairs(20, seed=5)]


@pytest.fixture
def copy(toy_bundle_path, tmp_path):
    return shutil.copytree(toy_bundle_path, tmp_path / "bundle")


def outputs(bundle, beam=3):
    gens = Pipeline.from_bundle(bundle).generate("reverse", INPUTS, SearchOptions(beam_size=beam))
    return [(g.text, g.score) for g in gens]


def test_manifest_describes_the_bundle(toy_bundle):
    m = toy_bundle.manifest
    assert m["format_version"] == 1 and m["id"] == "toy" and toy_bundle.tasks == ["reverse"]
    assert m["tasks"]["reverse"]["metric"] == "rouge_l"
    assert m["tasks"]["reverse"]["valid_scores"]["rouge_l"] > 90
    assert len(m["training"]["data_fingerprint"]) == 64
    assert set(m["sha256"]) == {
        WEIGHTS,
        "source.vocab",
        "target.reverse.vocab",
        "shortlist.reverse.safetensors",
    }
    assert m["tasks"]["reverse"]["shortlist"] == "shortlist.reverse.safetensors"


def test_save_then_load_gives_identical_outputs(toy_bundle, tmp_path):
    # With its shortlist tables: without them the copy decodes over the whole vocabulary,
    # the same answers but another product, whose scores may differ in the last bits.
    lexicons = {t: toy_bundle.model.head(t).lexicon for t in toy_bundle.tasks}
    assert all(lexicons.values())
    again = save_bundle(
        tmp_path / "re",
        toy_bundle.model,
        toy_bundle.model_cfg,
        toy_bundle.source,
        toy_bundle.targets,
        {"id": "toy", "version": "2"},
        lexicons=lexicons,  # type: ignore[arg-type]
    )
    assert outputs(load_bundle(again)) == outputs(toy_bundle)


def test_fp16_storage_halves_the_weights_and_keeps_outputs(toy_bundle, tmp_path):
    half = save_bundle(
        tmp_path / "half",
        toy_bundle.model,
        toy_bundle.model_cfg,
        toy_bundle.source,
        toy_bundle.targets,
        {"id": "toy", "version": "h"},
        dtype=torch.float16,
    )
    full_size = (toy_bundle.path / WEIGHTS).stat().st_size
    assert (half / WEIGHTS).stat().st_size < 0.6 * full_size
    assert [t for t, _ in outputs(load_bundle(half))] == [t for t, _ in outputs(toy_bundle)]


def test_a_flipped_byte_in_the_weights_is_refused(copy):
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights\.safetensors.*hash does not match"):
        load_bundle(copy)


def test_a_vocabulary_from_another_bundle_is_refused(copy):
    (copy / "target.reverse.vocab").write_text("<pad>\n<unk>\n<bos>\n<eos>\n다른\n")
    with pytest.raises(BundleError, match="target.reverse.vocab"):
        load_bundle(copy)


def test_a_missing_file_is_named(copy):
    (copy / "source.vocab").unlink()
    with pytest.raises(BundleError, match="source.vocab: missing"):
        load_bundle(copy)


def test_format_version_and_bad_json(copy):
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(copy)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle.json: not found"):
        load_bundle(tmp_path)


def test_the_shipped_models_load_and_serve_every_task():
    """What `make serve` serves: verified, loadable, three heads that answer."""
    from hanseq.engine.manifest import find_bundles
    from tests.conftest import REPO

    (path,) = find_bundles(REPO / "models")
    bundle = load_bundle(path)
    assert set(bundle.tasks) == {"translate", "respond", "summarize"}
    pipeline = Pipeline.from_bundle(bundle)
    for task in bundle.tasks:
        assert pipeline.generate(task, ["파일을 열 수 없습니다."])[0].text
