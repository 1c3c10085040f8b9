"""The worker's batch runner, in-process: split-and-retry when a batch fails.

No GPU here, so GPU memory is the one thing stood in for: the pipeline is wrapped to raise
torch.OutOfMemoryError for batches over two rows, and for one input even alone. The runner,
the bundle and the decoding are the real ones."""

from __future__ import annotations

import pytest
import torch

from service.workers import _Runner, find_bundles
from tests.conftest import reversal_pairs

TEXTS = [line.split("\t")[0] for line in reversal_pairs(7, seed=51)]


class Pipe:
    """What the runner sends its parent (partial outputs), kept for the test."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


@pytest.fixture(scope="module")
def runner(service_bundle_path):
    return _Runner("cpu", service_bundle_path, threads=1, half=False, cancel=[0] * 64)


def options() -> dict:
    return {"max_length": 20}


def test_a_batch_out_of_memory_is_split_until_it_fits(runner, monkeypatch):
    expected = runner.run(Pipe(), 1, "translate", TEXTS, options(), set())
    real = runner.pipelines["translate"].generate
    sizes = []

    def limited(task, texts, *args, **kwargs):
        sizes.append(len(texts))
        if len(texts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real(task, texts, *args, **kwargs)

    monkeypatch.setattr(runner.pipelines["translate"], "generate", limited)
    results = runner.run(Pipe(), 2, "translate", TEXTS, options(), set())
    assert [r["text"] for r in results] == [e["text"] for e in expected]
    assert sizes[0] == 7 and max(s for s in sizes[1:] if s <= 2) <= 2


def test_only_the_request_that_fails_alone_fails(runner, monkeypatch):
    real = runner.pipelines["translate"].generate
    poison = TEXTS[3]

    def fragile(task, texts, *args, **kwargs):
        if poison in texts:
            raise RuntimeError("this input breaks decoding")
        return real(task, texts, *args, **kwargs)

    monkeypatch.setattr(runner.pipelines["translate"], "generate", fragile)
    results = runner.run(Pipe(), 3, "translate", TEXTS, options(), set())
    assert "error" in results[3] and "this input breaks decoding" in results[3]["error"]
    assert all("text" in r for i, r in enumerate(results) if i != 3)


def test_stream_rows_get_partials_and_cancelled_rows_stop(runner):
    pipe = Pipe()
    runner.cancel[1] = 4  # row 1 of batch 4 was cancelled before it started
    results = runner.run(pipe, 4, "respond", TEXTS[:3], options(), {0})
    partial_rows = {m[2] for m in pipe.sent}
    assert partial_rows == {0} and pipe.sent[-1][3] == results[0]["text"]
    assert results[1]["tokens"] == [] or len(results[1]["tokens"]) <= 1
    assert results[2]["text"]


def test_find_bundles(service_bundle_path, tmp_path):
    assert find_bundles(service_bundle_path) == [service_bundle_path]
    assert find_bundles(service_bundle_path.parent) == [service_bundle_path]
    with pytest.raises(FileNotFoundError, match="no bundle"):
        find_bundles(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_bundles(tmp_path / "nope")
