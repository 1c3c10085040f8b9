"""The `hanseq` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.pipeline import Pipeline
from tests.conftest import REPO, reversal_pairs, write_training_yaml

BIN = Path(sys.executable).parent


def hanseq(*args, stdin="", env=None):
    return subprocess.run(
        [str(BIN / "hanseq"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_generate_keeps_one_line_per_input_in_order(toy_bundle_path, toy_bundle):
    lines = [p.split("\t")[0] for p in reversal_pairs(30, seed=21)]
    lines[4] = ""
    lines[9] = "   "
    run = hanseq(
        "generate",
        "--model",
        str(toy_bundle_path),
        "--task",
        "reverse",
        "--batch-size",
        "7",
        stdin="\n".join(lines) + "\n",
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout.split("\n")[:-1]
    assert len(out) == len(lines)
    assert out[4] == "" and out[9] == ""
    alone = Pipeline.from_bundle(toy_bundle)
    assert out == [alone.generate("reverse", [line])[0].text for line in lines]


def test_generate_json_has_n_best_and_attention(toy_bundle_path):
    run = hanseq(
        "generate",
        "--model",
        str(toy_bundle_path),
        "--task",
        "reverse",
        "--json",
        "--attention",
        "--beam",
        "3",
        "--n-best",
        "2",
        stdin="사과 바다 하늘\n",
    )
    record = json.loads(run.stdout)
    assert record["text"] == "하늘 바다 사과"
    assert len(record["alternatives"]) == 1
    assert len(record["attention"]) == len(record["tokens"]) + 1


def test_eval_prints_one_json_object(toy_bundle_path, toy_corpus):
    run = hanseq(
        "eval",
        "--model",
        str(toy_bundle_path),
        "--task",
        "reverse",
        "--data",
        str(toy_corpus / "valid.tsv"),
        "--max-examples",
        "50",
        "--by-origin",
    )
    result = json.loads(run.stdout)
    assert result["examples"] == 50 and result["rouge_l"] > 90
    assert {
        "rouge_1",
        "rouge_2",
        "bleu",
        "distinct_1",
        "distinct_2",
        "sentences_per_second",
    } <= set(result)
    assert set(result["by_origin"]) == {"toy"}


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["generate", "--model", "{b}", "--task", "summarize"],
            "unknown task 'summarize'; this model serves: reverse",
        ),
        (["generate", "--model", "/nonexistent", "--task", "reverse"], "bundle.json: not found"),
        (
            ["generate", "--model", "{b}", "--task", "reverse", "--beam", "2", "--n-best", "3"],
            "n_best must be between 1 and beam_size",
        ),
        (
            ["generate", "--model", "{b}", "--task", "reverse", "--max-length", "0"],
            "max_length must be >= 1",  # a zero is a value, not "unset"
        ),
        (
            ["generate", "--model", "{b}", "--task", "reverse", "--beam", "0"],
            "beam_size must be >= 1",
        ),
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
        (
            ["eval", "--model", "{b}", "--task", "reverse", "--data", "/nonexistent.tsv"],
            "data file not found",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(toy_bundle_path, args, message):
    run = hanseq(*[a.replace("{b}", str(toy_bundle_path)) for a in args], stdin="사과\n")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_train_reports_malformed_lines_and_strict_refuses_them(toy_corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = (toy_corpus / "train.tsv").read_text().splitlines()[:300]
    (data / "train.tsv").write_text(
        "\n".join(good[:100] + ["no tab here", "\t빈 원문"] + good[100:]) + "\n"
    )
    config = write_training_yaml(tmp_path / "c.yaml", data, tmp_path / "run", valid="train.tsv")
    run = hanseq("train", "--config", str(config))
    assert run.returncode == 0, run.stderr
    assert "skipped 2 malformed line(s) of 302" in run.stderr
    assert "train.tsv:101: expected 2 or 3 tab-separated columns" in run.stderr
    assert (tmp_path / "run" / "bundle" / "bundle.json").is_file()
    strict = hanseq("train", "--config", str(config), "--strict", "--no-resume")
    assert strict.returncode == 2 and "train.tsv:101" in strict.stderr


def test_train_mixed_precision_overrides_the_config(toy_corpus, tmp_path):
    """``--mixed-precision`` wins over the config's (auto); the log says what each step ran in."""
    config = write_training_yaml(tmp_path / "c.yaml", toy_corpus, tmp_path / "run")
    for setting, expected in [("bf16", "bf16"), ("off", "fp32")]:
        run = hanseq("train", "--config", str(config), "--mixed-precision", setting, "--no-resume")
        assert run.returncode == 0, run.stderr
        log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in log if '"validation"' in line]
        assert [r["precision"] for r in records[-2:]] == [expected, expected]
    wrong = hanseq("train", "--config", str(config), "--mixed-precision", "int8")
    assert wrong.returncode == 2 and "--mixed-precision: invalid choice: 'int8'" in wrong.stderr


def test_help_lists_the_commands():
    run = hanseq("--help")
    assert run.returncode == 0
    for command in ["train", "generate", "eval", "serve"]:
        assert command in run.stdout


def test_export_fp16_halves_the_weights_and_keeps_the_metadata(toy_bundle_path, tmp_path):
    run = hanseq(
        "export", "--model", str(toy_bundle_path), "--output", str(tmp_path / "half"), "--fp16"
    )
    assert run.returncode == 0, run.stderr
    before = json.loads((toy_bundle_path / "bundle.json").read_text())
    after = json.loads((tmp_path / "half" / "bundle.json").read_text())
    assert after["version"] == before["version"]
    assert after["tasks"]["reverse"]["valid_scores"] == before["tasks"]["reverse"]["valid_scores"]
    size = (tmp_path / "half" / "weights.safetensors").stat().st_size
    assert size < 0.6 * (toy_bundle_path / "weights.safetensors").stat().st_size
    again = hanseq("export", "--model", str(toy_bundle_path), "--output", str(tmp_path / "half"))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_export_keeps_drops_or_rebuilds_the_shortlist_tables(toy_bundle_path, toy_corpus, tmp_path):
    table = "shortlist.reverse.safetensors"
    kept = hanseq("export", "--model", str(toy_bundle_path), "--output", str(tmp_path / "kept"))
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "kept" / table).read_bytes() == (toy_bundle_path / table).read_bytes()
    assert "shortlist tables for reverse" in kept.stdout

    dropped = tmp_path / "dropped"
    run = hanseq(
        "export", "--model", str(toy_bundle_path), "--output", str(dropped), "--no-shortlist"
    )
    assert run.returncode == 0, run.stderr
    manifest = json.loads((dropped / "bundle.json").read_text())
    assert "shortlist" not in manifest["tasks"]["reverse"] and not (dropped / table).exists()
    assert load_bundle(dropped).model.head("reverse").lexicon is None

    config = tmp_path / "toy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(toy_corpus)},
                "tasks": {"reverse": {"train": "train.tsv", "target": {"kind": "mecab"}}},
            }
        )
    )
    rebuilt = tmp_path / "rebuilt"
    run = hanseq(
        "export", "--model", str(dropped), "--output", str(rebuilt), "--shortlist", str(config)
    )
    assert run.returncode == 0, run.stderr
    assert (rebuilt / table).read_bytes() == (toy_bundle_path / table).read_bytes()

    other = {"other": {"train": "train.tsv", "target": {"kind": "mecab"}}}
    config.write_text(yaml.safe_dump({"data": {"root": str(toy_corpus)}, "tasks": other}))
    run = hanseq(
        "export",
        "--model",
        str(dropped),
        "--output",
        str(tmp_path / "x"),
        "--shortlist",
        str(config),
    )
    assert run.returncode == 2 and "no 'reverse'" in run.stderr


def test_train_with_a_vocabulary_too_small_names_the_key_and_a_size(toy_corpus, tmp_path):
    config = write_training_yaml(
        tmp_path / "c.yaml",
        toy_corpus,
        tmp_path / "run",
        source={"kind": "mecab", "subword": "bpe", "vocab_size": 50},
        max_steps=2,
    )
    run = hanseq("train", "--config", str(config))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "source.vocab_size: 50 is too small for this data, which needs at least" in run.stderr
    assert "try 300 or more" in run.stderr


def test_sigterm_checkpoints_the_step_and_a_rerun_resumes_there(toy_corpus, tmp_path):
    """A run stopped by SIGTERM (an evicted pod, ``kill``) keeps its last step; the same command
    resumes from it, and ``--max-minutes`` gives that rerun its own budget."""
    config = write_training_yaml(
        tmp_path / "c.yaml", toy_corpus, tmp_path / "run",
        max_steps=1_000_000, valid_every=1_000_000, max_minutes=0, progress=False,
    )  # fmt: skip
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [str(BIN / "hanseq"), "train", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        # training has begun once its log has the data report; then give it a few steps
        log = tmp_path / "run" / "log.jsonl"
        deadline = time.monotonic() + 240
        while not log.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        assert not checkpoint.exists()  # no validation yet: only the signal writes one
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    step = int(re.search(r"SIGTERM: stopped at step (\d+), checkpoint ", stderr).group(1))
    assert step > 0 and torch.load(checkpoint, weights_only=True)["step"] == step
    rerun = hanseq("train", "--config", str(config), "--max-minutes", "0.05")
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {checkpoint} at step {step}" in rerun.stdout
    assert (tmp_path / "run" / "bundle" / "bundle.json").is_file()  # the budget's end: a bundle
    assert hanseq("train", "--config", str(config), "--max-minutes", "-1").returncode == 2
