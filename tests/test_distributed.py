"""Several processes through torchrun (DistributedDataParallel on gloo, on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hanseq.engine.bundle import load_bundle
from tests.conftest import REPO, write_training_yaml


def test_torchrun_two_processes_train_one_bundle(toy_corpus, tmp_path):
    config = write_training_yaml(
        tmp_path / "c.yaml",
        toy_corpus,
        tmp_path / "run",
        model={"rnn": "gru"},
        max_steps=6,
        valid_every=3,
        valid_max_examples=10,
        batch_size=16,
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    run = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hanseq.engine.cli",
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "validation"] == [3, 6]  # rank 0 only
    assert load_bundle(tmp_path / "run" / "bundle").tasks == ["reverse"]
