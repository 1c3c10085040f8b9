"""Shared fixtures: a toy corpus written here, and one tiny real model trained on it.

The toy task reverses a sequence of Korean words (single Mecab morphemes): small enough to
learn in well under a minute on a CPU, hard enough that attention must work to learn it.
"""

from __future__ import annotations

import importlib.util
import os

# One torch thread per process, here and in every process a test starts (they inherit the
# environment): OpenMP's threads wait for each other at every operation, so a two-thread
# process whose second core is busy (CI machines are) crawls. Measured on a 2-vCPU machine with
# a training on the other core: 200 steps of the toy model took 5.2 s on one thread and 102.6 s
# on two. The models here are too small for a second thread to help.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The real corpora, for the few tests that read them. HANSEQ_CORPORA wins over every config's
# data.root (engine/config.py), so a developer's setting would send the toy runs of every other
# test to it: it is taken out of this process's environment here, and the tests that read the
# real corpora hand it to what they start themselves (real_corpora() below).
_CORPORA = os.environ.pop("HANSEQ_CORPORA", "")

import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hanseq.engine.bundle import Bundle, load_bundle
from hanseq.engine.config import Config, TaskConfig, from_dict
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.training import train
from hanseq.service.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
WORDS = [
    "사과", "바다", "하늘", "학교", "친구", "음악", "시간", "나무",
    "도시", "우유", "모자", "의자", "창문", "노래", "기차", "연필",
]  # fmt: skip


def real_corpora() -> Path:
    """$HANSEQ_CORPORA, or ../shared/corpora beside the checkout; the test is skipped, and says
    where it looked, when neither holds them (a clone outside the workspace)."""
    root = Path(_CORPORA) if _CORPORA else REPO.parent / "shared" / "corpora"
    if not (root / "translate-koen" / "valid.tsv").is_file():
        pytest.skip(f"corpora not found at {root} (set HANSEQ_CORPORA)")
    return root.resolve()


def reversal_pairs(count: int, seed: int, min_words: int = 3, max_words: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(min_words, max_words))
        lines.append(f"{' '.join(words)}\t{' '.join(reversed(words))}\ttoy")
    return lines


def write_toy_corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.tsv").write_text("\n".join(reversal_pairs(4000, 1)) + "\n")
    (directory / "valid.tsv").write_text("\n".join(reversal_pairs(200, 2)) + "\n")
    return directory


def toy_config(root: Path, output_dir: Path, **training) -> Config:
    raw = {
        "name": "toy",
        "data": {"root": str(root), "max_source_length": 20, "max_target_length": 20},
        "source": {"kind": "mecab"},
        "tasks": {
            "reverse": {"train": "train.tsv", "valid": "valid.tsv", "target": {"kind": "mecab"}}
        },
        "model": {"rnn": "gru", "embedding_dim": 48, "hidden_size": 96, "dropout": 0.0},
        "training": {
            "output_dir": str(output_dir),
            "batch_size": 64,
            "max_steps": 800,
            # No wall-clock budget: 800 steps take ~20 s alone, but on a loaded machine any
            # budget (3 minutes, once) cut the run short of learning the task, and the toy
            # model, which every decoding test reads, must not depend on the machine's load.
            "max_minutes": 0.0,
            "learning_rate": 0.005,
            "warmup_steps": 50,
            "lr_decay": "cosine",  # annealed: a converged toy model, not a lucky one
            "label_smoothing": 0.0,
            "valid_every": 200,
            "valid_max_examples": 200,
            "patience": 0,
            "keep_checkpoints": 1,
            "progress": False,
            **training,
        },
    }
    return from_dict(Config, raw, "")


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py imported as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_training_yaml(
    path: Path,
    root: Path,
    output_dir: Path,
    *,
    source=None,
    model=None,
    valid="valid.tsv",
    **training,
) -> Path:
    """A tiny config file as a user hands it to ``hanseq train --config``: a few steps only."""
    raw = {
        "name": "toy",
        "data": {"root": str(root)},
        "tasks": {"reverse": {"train": "train.tsv", "valid": valid}},
        "model": {"embedding_dim": 16, "hidden_size": 16, **(model or {})},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 4,
            "valid_every": 2,
            "valid_max_examples": 5,
            **training,
        },
    }
    if source:
        raw["source"] = source
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_bundle_path(toy_corpus, tmp_path_factory) -> Path:
    """A real model trained for at most a minute on the reversal task."""
    return train(toy_config(toy_corpus, tmp_path_factory.mktemp("run")), resume=False)


@pytest.fixture(scope="session")
def toy_bundle(toy_bundle_path) -> Bundle:
    return load_bundle(toy_bundle_path)


@pytest.fixture(scope="module")
def pipeline(toy_bundle) -> Pipeline:
    """The toy model behind a Pipeline (one per module: tests may change its settings)."""
    return Pipeline.from_bundle(toy_bundle)


def encode_texts(pipeline: Pipeline, texts: list[str]):
    """Texts -> the (ids, lengths) batch that search() and RunningBatch.join() take."""
    return pipeline.encode_sources(pipeline.tokenize(texts))


def first_step_logits(pipeline: Pipeline, task: str, texts: list[str]):
    """The first decoder step's logits (fp32, the vocabulary's columns) for ``texts``."""
    from hanseq.engine.vocabulary import BOS_ID

    src, src_len = encode_texts(pipeline, texts)
    with torch.inference_mode():
        head = pipeline.model.head(task)
        memory, state = head.prepare(pipeline.model.encode(src, src_len))
        logits, _, _ = head.step(torch.full((len(texts),), BOS_ID), state, memory)
    return logits[:, : head.generator.weight.size(0)].float()


def three_task_config(root: Path, output_dir: Path) -> Config:
    """translate / respond / summarize heads, all on the toy data: for service tests, where
    what matters is that the engine and the server agree, not what the model says."""
    head = {"train": "train.tsv", "valid": "valid.tsv", "target": {"kind": "mecab"}}
    cfg = toy_config(
        root, output_dir, max_steps=300, valid_every=300, valid_max_examples=20, max_minutes=0.0
    )
    cfg.name = "service-toy"
    cfg.tasks = {t: from_dict(TaskConfig, head, t) for t in ("translate", "respond", "summarize")}
    return cfg


@pytest.fixture(scope="session")
def service_bundle_path(toy_corpus, tmp_path_factory) -> Path:
    return train(three_task_config(toy_corpus, tmp_path_factory.mktemp("service")), resume=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(channel: grpc.Channel, server: subprocess.Popen, seconds: float = 120) -> None:
    """Poll the health service until the whole server says SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became SERVING")


def start_server(models: Path, port: int, **settings: str) -> subprocess.Popen:
    """`hanseq serve` as a user runs it, on ``port``, serving ``models``."""
    env = {
        **os.environ,
        "HANSEQ_PORT": str(port),
        "HANSEQ_METRICS_PORT": "0",
        "HANSEQ_MODELS": str(models),
        "HANSEQ_DEVICES": "cpu",
        "HANSEQ_LOG_LEVEL": "WARNING",
        "HANSEQ_CPU_PRECISION": "fp32",  # as settings_for: answers equal the fp32 engine's
        **{f"HANSEQ_{k.upper()}": v for k, v in settings.items()},
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "hanseq"), "serve"],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )


class RedisServer:
    """A real redis-server on a free port, in a temporary directory, persisting nothing;
    it can be stopped and started again on the same port (an outage, then recovery)."""

    def __init__(self, workdir: Path, password: str = ""):
        self.workdir, self.port, self.password = workdir, free_port(), password
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; `make test` installs it"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.workdir)]
            + (["--requirepass", self.password] if self.password else []),
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class HanseqServer:
    """`hanseq serve` in its own process on a free port, as a client sees it; it can be
    stopped (SIGTERM: drain) and started again on the same port."""

    def __init__(self, models: Path, **settings: str):
        self.models, self.settings, self.port = models, settings, free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_server(self.models, self.port, **self.settings)
        with grpc.insecure_channel(self.target) as channel:
            wait_serving(channel, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


@pytest.fixture(scope="session")
def hanseq_server(service_bundle_path):
    """One real server for the client tests (translate / respond / summarize on toy data);
    without tokens, so its admin RPC (reload) is allowed explicitly."""
    server = HanseqServer(service_bundle_path, admin_without_auth="true")
    server.start()
    yield server
    server.stop()


def make_certificates(directory: Path) -> Path:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate,
    made by the openssl command (installed by `make test` where missing); PEM files in
    ``directory``: ca.pem, server.pem/.key, client.pem/.key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hanseq test CA")  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
    return directory


def settings_for(models, **overrides):
    """Settings for an in-process server (create_app) on free ports, ignoring the env."""
    base = {
        "port": 0,
        "metrics_port": 0,
        "models": str(models),
        "devices": "cpu",
        "cpu_threads": 1,
        "max_queue_delay_ms": 10,
        # fp32 on every CPU, so that served answers equal the fp32 engine's in the tests
        # (auto picks bf16 on CPUs with AMX; tests/test_precision.py covers the other paths)
        "cpu_precision": "fp32",
    }
    return load_settings({**base, **overrides}, env={})


def run_client_example(command: str, target: str, cwd: Path) -> subprocess.CompletedProcess:
    """A README's shell line, with this venv's commands first and HANSEQ_TARGET set."""
    return subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HANSEQ_TARGET": target,
        },
    )
