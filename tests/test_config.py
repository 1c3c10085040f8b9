"""Config: every mistake is one ConfigurationError that names the key."""

from __future__ import annotations

import pytest
import yaml

from hanseq.engine.config import ConfigurationError, load_config
from tests.conftest import REPO, bench_module

GOOD = """
name: t
tasks:
  translate: {train: a.tsv, target: {kind: sentencepiece}}
model: {attention: bahdanau}
training: {teacher_forcing: {schedule: linear, start: 1.0, end: 0.5}}
"""


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_good_config_is_typed(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.tasks["translate"].target.kind == "sentencepiece"
    assert cfg.training.teacher_forcing.end == 0.5
    assert cfg.task_metric("translate") == "bleu"
    assert cfg.corpora_root() == tmp_path / "../shared/corpora"


def test_corpora_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HANSEQ_CORPORA", "/data/corpora")
    assert str(load_config(write(tmp_path, GOOD)).corpora_root()) == "/data/corpora"


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "modle: {}\n", r"unknown key 'modle'; valid keys: name, data"),
        (GOOD.replace("bahdanau", "luong"), r"model.attention: 'luong' is not one of: dot"),
        (GOOD + "data: {max_source_length: many}\n", r"data.max_source_length: expected int"),
        (
            GOOD.replace("sentencepiece}", "sentencepiece, vocab: 3}"),
            r"unknown key 'tasks.translate.target.vocab'",
        ),
        ("name: t\n", "at least one task"),
        (GOOD.replace("a.tsv", "''"), "tasks.translate.train: a training file is required"),
        (GOOD + "model: {hidden_size: 33}\n", "hidden_size: must be even"),
        (GOOD + "training: {batch_size: 0}\n", "training.batch_size: must be > 0"),
        ("tasks: [1, 2]\n", "tasks: expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigurationError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


CONFIGS = REPO / "configs"
VARIANT_FILES = sorted((CONFIGS / "tuning").glob("*.yaml"))  # tuning/T.yaml varies T-single.yaml
FULL_CONFIGS = sorted(CONFIGS.glob("*.yaml")) + [
    v for v in VARIANT_FILES if "name:" in v.read_text()
]


@pytest.mark.parametrize("path", FULL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path, tmp_path):
    """A config in the repository whose keys went stale would fail only when someone trains.

    A later stage's config whose ``init_from`` is an earlier stage's run (under runs/, which
    a clone has not trained) says so by name; its own keys are checked without it (and
    without freeze_encoder, which needs it)."""
    raw = yaml.safe_load(path.read_text())
    base = (path.parent / raw.get("init_from", "")).resolve()
    if raw.get("init_from") and "runs" in base.parts and not base.exists():
        with pytest.raises(ConfigurationError, match="init_from: .* is not a hanseq bundle"):
            load_config(path)
        raw.pop("init_from")
        raw.pop("freeze_encoder", None)
        path = tmp_path / path.name
        path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.tasks and cfg.training.max_minutes > 0


@pytest.mark.parametrize(
    "path", [v for v in VARIANT_FILES if v not in FULL_CONFIGS], ids=lambda p: p.name
)
def test_every_tuning_variant_applies_to_its_base(path, tmp_path):
    tune = bench_module("tune")
    base = CONFIGS / f"{path.stem}-single.yaml"
    for name, overrides in yaml.safe_load(path.read_text()).items():
        out = tmp_path / tune.slug(name)
        assert load_config(tune.variant_config(base, overrides or {}, out, 1.0)).tasks, name
