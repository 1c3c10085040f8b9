"""The worker's decoding loop, in-process: continuous batching, split-and-retry, streaming and
cancellation, driven message by message as the server's pipe would.

No GPU here, so GPU memory is the one thing stood in for: a running batch's step (or, for beam
search, the scheduler's beam group) is wrapped to raise torch.OutOfMemoryError over two rows.
The runner, the bundle and the decoding are the real ones. Batch ``seq`` holds rows
``100 * seq + i``."""

from __future__ import annotations

import os

import pytest
import torch

from hanseq.engine.continuous import RunningBatch
from hanseq.engine.manifest import find_bundles
from hanseq.engine.options import BatchKey, SearchOptions
from hanseq.engine.scheduler import Scheduler
from hanseq.service.cpus import cpu_quota, usable_cpus
from hanseq.service.protocol import (
    Cancel,
    Cancelled,
    DecodeBatch,
    Done,
    Failed,
    Partial,
    Refused,
    Row,
)
from hanseq.service.worker_process import Runner
from hanseq.service.workers import default_threads
from tests.conftest import REPO, reversal_pairs

TEXTS = [line.split("\t")[0] for line in reversal_pairs(7, seed=51)]


class Pipe:
    """What the runner sends its parent, kept for the test."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)

    def results(self, seq):
        done = {m.row: m.answer for m in self.sent if isinstance(m, Done) and m.row // 100 == seq}
        return [done[row] for row in sorted(done)]


@pytest.fixture(scope="module")
def loaded(service_bundle_path):
    return Runner("cpu", [service_bundle_path], 1, "fp32", Pipe())


@pytest.fixture()
def runner(loaded):
    loaded.conn = Pipe()  # a fresh record of what it sends, per test
    yield loaded
    assert not loaded._decoding() and not loaded.held  # nothing left behind


def batch(seq, texts, task="translate", stream=(), **options):
    rows = [Row(100 * seq + i, text, i in stream) for i, text in enumerate(texts)]
    return DecodeBatch(BatchKey(task, SearchOptions(**{"max_length": 20, **options})), rows)


def drain(runner):
    while runner._decoding():
        runner.step()


def test_rows_joining_a_running_batch_get_what_they_get_alone(runner):
    for seq, text in enumerate(TEXTS, 100):
        runner.handle(batch(seq, [text]))
        drain(runner)
    alone = [runner.conn.results(seq)[0].text for seq in range(100, 107)]
    runner.conn = Pipe()
    runner.handle(batch(1, TEXTS[:3]))
    runner.step()
    runner.step()
    runner.handle(batch(2, TEXTS[3:]))  # joins rows that are two steps ahead
    drain(runner)
    together = [r.text for r in runner.conn.results(1) + runner.conn.results(2)]
    assert together == alone
    sizes = {m.batch_size for m in runner.conn.sent if isinstance(m, Done) and m.row // 100 == 2}
    assert max(sizes) > len(TEXTS[3:])  # it decoded alongside batch 1


def test_a_step_out_of_memory_splits_the_batch_until_it_fits(runner, monkeypatch):
    runner.handle(batch(1, TEXTS))
    drain(runner)
    expected = [r.text for r in runner.conn.results(1)]
    real, sizes = RunningBatch.step, []

    def limited(self, *args, **kwargs):
        sizes.append(len(self))
        if len(self) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunningBatch, "step", limited)
    runner.handle(batch(2, TEXTS))
    drain(runner)
    assert [r.text for r in runner.conn.results(2)] == expected
    assert sizes[0] == 7 and 2 in sizes


def test_only_the_row_that_fails_alone_fails(runner, monkeypatch):
    real = RunningBatch.step

    def fragile(self, *args, **kwargs):
        if any(k % 100 == 3 for k in self.keys):
            raise RuntimeError("this input breaks decoding")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunningBatch, "step", fragile)
    runner.handle(batch(3, TEXTS))
    drain(runner)
    results = runner.conn.results(3)
    assert isinstance(results[3], Failed) and "this input breaks decoding" in results[3].message
    assert all(hasattr(r, "text") for i, r in enumerate(results) if i != 3)


def test_beam_batches_split_and_retry_too(runner, monkeypatch):
    pipeline = runner.pipelines["translate"]
    expected = pipeline.generate("translate", TEXTS, _beam())
    real = Scheduler._beam

    def limited(self, key, group):
        if len(group) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real(self, key, group)

    monkeypatch.setattr(Scheduler, "_beam", limited)
    runner.handle(batch(4, TEXTS, beam_size=3))
    drain(runner)
    assert [r.text for r in runner.conn.results(4)] == [g.text for g in expected]


def test_beam_rows_go_in_groups_and_cancelled_ones_are_never_decoded(runner):
    many = [TEXTS[i % len(TEXTS)] for i in range(20)]
    runner.handle(batch(11, many, beam_size=2))
    runner.handle(batch(12, [TEXTS[0]]))  # a greedy row, stepping between the groups
    runner.step()
    assert len(runner.conn.results(11)) == 8  # the first group only
    for row in range(8, 20):
        runner.handle(Cancel(1100 + row))  # its caller left
    drain(runner)
    answers = runner.conn.results(11)  # every row is answered, or the parent's count leaks
    assert len(answers) == 20 and answers[8:] == [Cancelled()] * 12
    assert all(hasattr(a, "text") for a in answers[:8]) and runner.conn.results(12)[0].text


def _beam():
    return SearchOptions(beam_size=3, max_length=20)


def test_stream_rows_get_partials_and_cancelled_rows_stop(runner):
    runner.handle(batch(5, TEXTS[:3], task="respond", stream=[0], max_length=60, min_length=40))
    runner.handle(Cancel(501))  # row 1's caller left before its first step: never decoded
    runner.step()
    runner.handle(Cancel(502))
    drain(runner)
    results = runner.conn.results(5)
    partials = [m for m in runner.conn.sent if isinstance(m, Partial)]
    assert {m.row for m in partials} == {500} and partials[-1].text == results[0].text
    assert results[1] == Cancelled() and len(results[2].tokens) <= 2
    assert len(results[0].tokens) >= 40


def test_a_message_whose_rows_are_all_answered_at_once_starts_no_batch(runner):
    runner.max_tokens = 3
    try:
        runner.handle(batch(13, ["사과 바다 하늘 학교"]))  # over the limit: answered at once
    finally:
        runner.max_tokens = 0
    assert not runner._decoding()  # an empty running batch would be stepped forever
    runner.handle(batch(14, [TEXTS[0]]))
    drain(runner)
    assert runner.conn.results(14)[0].text


def test_an_empty_text_is_answered_at_once(runner):
    runner.handle(batch(6, ["", TEXTS[0]]))
    assert runner.conn.results(6)[0].text == ""
    drain(runner)
    assert runner.conn.results(6)[1].text


def test_a_request_the_loop_cannot_take_fails_alone(runner):
    runner.handle(batch(7, [TEXTS[0]]))  # in flight while the bad one arrives
    runner.handle(batch(8, TEXTS[1:3], beam_size="two"))  # a broken message
    assert [r.message[:9] for r in runner.conn.results(8)] == ["TypeError"] * 2
    drain(runner)
    assert runner.conn.results(7)[0].text  # the worker lived on and finished it


def test_inputs_over_the_token_limit_are_refused_at_once(runner):
    runner.max_tokens = 3
    try:
        long, short = "사과 바다 하늘 학교", "사과 바다"
        runner.handle(batch(9, [long, short]))
        runner.handle(batch(10, [long], beam_size=2))  # none left to decode: nothing runs
        assert not runner.schedulers["translate"]._beams
        drain(runner)
    finally:
        runner.max_tokens = 0
    assert runner.conn.results(9)[0] == Refused("is 4 tokens; the limit is 3")
    assert runner.conn.results(9)[1].text
    assert runner.conn.results(10) == [Refused("is 4 tokens; the limit is 3")]


def test_find_bundles(service_bundle_path, tmp_path):
    assert find_bundles(service_bundle_path) == [service_bundle_path]
    assert find_bundles(service_bundle_path.parent) == [service_bundle_path]
    with pytest.raises(FileNotFoundError, match="no bundle"):
        find_bundles(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_bundles(tmp_path / "nope")


def test_the_shortlist_setting_reaches_the_workers_bundles(service_bundle_path):
    on = Runner("cpu", [service_bundle_path], 1, "fp32", Pipe())
    off = Runner("cpu", [service_bundle_path], 1, "fp32", Pipe(), shortlist=False)
    for task in on.bundles:
        assert on.bundles[task].model.head(task).lexicon is not None
        assert off.bundles[task].model.head(task).lexicon is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_cuda_out_of_memory_splits_and_every_row_is_answered():
    """Greedy rows of the shipped model on a GPU whose memory the worker may use only
    three quarters of what they took: a step runs out of memory for real, the batch is split
    until each part's step fits, and every row gets the answer it got with room to spare.
    (The rows' states stay on the GPU: splitting saves a step's transient memory, not
    theirs.)"""
    bundle = REPO / "models" / "hanseq-multitask"
    runner = Runner("cuda:0", [bundle], 0, "fp16", Pipe())
    words = ["파일", "문서", "저장", "열기", "닫기", "편집", "보기", "설정", "글꼴", "색상"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(1024)]

    def decode(seq: int) -> tuple[list, int]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        runner.conn = Pipe()
        rows = [Row(100_000 * seq + i, text) for i, text in enumerate(texts)]
        runner.handle(DecodeBatch(BatchKey("translate", SearchOptions(max_length=40)), rows))
        drain(runner)
        done = [m for m in runner.conn.sent if isinstance(m, Done)]
        return [
            m.answer for m in sorted(done, key=lambda m: m.row)
        ], torch.cuda.max_memory_reserved()

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    roomy, peak = decode(1)
    scheduler = runner.schedulers["translate"]
    recovered, recover = [], scheduler._recover
    scheduler._recover = lambda: (recovered.append(True), recover())[1]  # type: ignore[method-assign]
    room = base + (peak - base) * 3 // 4
    torch.cuda.set_per_process_memory_fraction(
        room / torch.cuda.get_device_properties(0).total_memory
    )
    try:
        tight, _ = decode(2)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert [getattr(r, "text", None) for r in tight] == [r.text for r in roomy]
    assert recovered  # it did run out, and split


def test_cpu_threads_follow_the_cgroup_quota(tmp_path):
    """A container's CPU limit, not the node's cores, sets the default thread count."""
    cores = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cpu_quota(v2) == 1.5 and usable_cpus(v2)[0] == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None and usable_cpus(v2)[0] == cores
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1") == 4.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path / "v1") is None
    assert cpu_quota(tmp_path / "nothing-here") is None
    assert default_threads(3, 2) == (3, "cpu_threads (HANSEQ_CPU_THREADS)")
    threads, why = default_threads(0, 1)
    assert threads == usable_cpus()[0] and "CPU worker" in why
