"""Server settings: defaults, YAML < env < flags, errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hanseq.engine.config import ConfigurationError
from hanseq.service.settings import FIELDS, REPO_MODELS, env_name, load_settings


def test_defaults_serve_the_shipped_models_on_loopback():
    s = load_settings(env={})
    assert (s.host, s.port, s.devices, s.max_batch_size) == ("127.0.0.1", 50051, "auto", 64)
    assert s.models_path().resolve() == REPO_MODELS.resolve()
    assert s.device_list() == ["cpu"]  # no GPU on the machines that run the tests


def test_precedence_file_then_env_then_flags(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("port: 7000\nmax_batch_size: 8\nreflection: false\n")
    env = {"HANSEQ_CONFIG": str(config), "HANSEQ_PORT": "7001", "HANSEQ_MAX_QUEUE_DELAY_MS": "2.5"}
    s = load_settings({"port": "7002"}, env=env)
    assert (s.port, s.max_batch_size, s.max_queue_delay_ms, s.reflection) == (7002, 8, 2.5, False)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HANSEQ_PORT": "http"}, "HANSEQ_PORT: 'http' is not a valid int for port"),
        ({"HANSEQ_REFLECTION": "maybe"}, "HANSEQ_REFLECTION"),
        ({"HANSEQ_MAX_BATCH_SIZE": "0"}, "max_batch_size (HANSEQ_MAX_BATCH_SIZE) must be > 0"),
        ({"HANSEQ_DEFAULT_BEAM_SIZE": "99"}, "default_beam_size must be in 0..max_beam_size"),
        ({"HANSEQ_CONFIG": "/nonexistent.yaml"}, "HANSEQ_CONFIG: /nonexistent.yaml not found"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env=env)


def test_unknown_key_in_the_file_lists_the_valid_ones(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("prot: 1\n")
    with pytest.raises(ConfigurationError, match="unknown setting 'prot'; valid: host, port"):
        load_settings(env={"HANSEQ_CONFIG": str(config)})


def test_serve_help_lists_every_setting_and_its_env_var():
    run = subprocess.run(
        [str(Path(sys.executable).parent / "hanseq"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0
    flat = " ".join(run.stdout.split())
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in flat and env_name(name) in flat
