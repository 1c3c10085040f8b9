"""Inside a worker process: the loaded bundles and the pipe loop around the engine's scheduler.

A ``DecodeBatch`` in, one ``Done`` per row out (service/protocol.py). Rows go into the
scheduler of their bundle (hanseq/engine/scheduler.py), which decodes greedy and sampling rows
with continuous batching (a row that arrives while others decode joins them before the next
step, and leaves the moment it ends) and beam rows in groups between the greedy steps. The
loop reads the pipe whenever it has nothing to decode, and between steps otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from hanseq.engine.manifest import find_bundles
from hanseq.engine.options import Generation
from hanseq.service import logs
from hanseq.service.protocol import (
    Answer,
    Cancel,
    Cancelled,
    DecodeBatch,
    Done,
    Failed,
    Fatal,
    FromWorker,
    Partial,
    Ready,
    Refused,
    Row,
    Stop,
    TaskInfo,
    ToWorker,
)

if TYPE_CHECKING:  # torch is imported inside the worker process only (Runner.__init__)
    from hanseq.engine.bundle import Bundle
    from hanseq.engine.pipeline import Pipeline
    from hanseq.engine.scheduler import Decoded, Scheduler, Source

log = logging.getLogger(__name__)
BEAM_GROUP = 8  # beam rows decoded at once: between groups the loop reads cancellations


def worker_main(
    conn: Connection,
    device: str,
    models: str,
    threads: int,
    precision: str,
    max_tokens: int = 0,
    shortlist: bool = True,
    logging_setup: tuple[str, str] = ("WARNING", "auto"),
) -> None:
    """Entry point of a worker process (a fresh interpreter: it sets up its own logging)."""
    logs.configure(*logging_setup)
    try:
        runner = Runner(
            device, find_bundles(Path(models)), threads, precision, conn, max_tokens, shortlist
        )
    except Exception as e:  # report why, then exit: the parent decides what to do
        conn.send(Fatal(f"{type(e).__name__}: {e}"))
        return
    try:
        conn.send(Ready(runner.describe()))
        runner.serve()
    except (EOFError, OSError):  # the server went away
        return


@dataclass
class _Held:
    """A row the worker holds: what its answer needs."""

    task: str
    source: list[str]
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    ids: list[int] = field(default_factory=list)  # streamed so far


class Runner:
    """The worker's bundles, one scheduler per bundle, and the loop that feeds them."""

    def __init__(
        self,
        device: str,
        bundles: list[Path],
        threads: int,
        precision: str,  # fp32 | bf16 | fp16 (CUDA) | int8 (CPU), engine/precision.py
        conn: Connection,
        max_tokens: int = 0,
        shortlist: bool = True,
    ):
        import torch

        from hanseq.engine.bundle import load_bundle
        from hanseq.engine.pipeline import Pipeline
        from hanseq.engine.precision import prepare
        from hanseq.engine.scheduler import Scheduler

        if threads > 0:
            torch.set_num_threads(threads)
        self.device, self.conn, self.max_tokens = torch.device(device), conn, max_tokens
        self.pipelines: dict[str, Pipeline] = {}
        self.bundles: dict[str, Bundle] = {}
        self.schedulers: dict[str, Scheduler] = {}  # task -> its bundle's scheduler
        for path in bundles:
            bundle = load_bundle(path, self.device, shortlist)
            prepare(bundle.model, precision)  # search takes the log-softmax in fp32
            scheduler = Scheduler(bundle.model, beam_group=BEAM_GROUP, cancelled=self._gone)
            for task in bundle.tasks:
                if task in self.pipelines:
                    raise ValueError(
                        f"task {task!r} is in two bundles: {self.bundles[task].path} and {path}"
                    )
                self.pipelines[task] = Pipeline.from_bundle(bundle, batch_size=1 << 16)
                self.pipelines[task].warn_truncated = False  # reported per request instead
                self.bundles[task], self.schedulers[task] = bundle, scheduler
        self._unique_schedulers = list({id(s): s for s in self.schedulers.values()}.values())
        self.held: dict[int, _Held] = {}
        self.cancelled: set[int] = set()  # held rows whose caller is gone
        self._answered: set[int] = set()  # rows answered while one message is handled
        self._warm_up()

    def _warm_up(self) -> None:
        """First calls are slow (allocation, kernel selection): pay for them before SERVING."""
        from hanseq.engine.options import SearchOptions

        for task, pipeline in self.pipelines.items():
            for beam in (1, 2):
                pipeline.generate(
                    task,
                    ["안녕하세요. 준비되었나요?"] * 2,
                    SearchOptions(beam_size=beam, max_length=8),
                )

    def describe(self) -> dict[str, TaskInfo]:
        out = {}
        for task, bundle in self.bundles.items():
            entry = bundle.manifest.get("tasks", {}).get(task, {})
            out[task] = TaskInfo(
                model_id=bundle.id,
                model_version=bundle.version,
                metric=entry.get("metric", ""),
                valid_scores=dict(entry.get("valid_scores", {})),
                context_turns=bundle.context_turns(task),
                decoding=dict(bundle.decoding(task)),
                max_target_length=int(bundle.manifest.get("max_target_length", 100)),
                max_source_length=int(bundle.manifest.get("max_source_length", 200)),
            )
        return out

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> None:
        """Read what the server sent (waiting only when nothing decodes), then step."""
        while True:
            while not self._decoding() or self.conn.poll(0):
                message: ToWorker = self.conn.recv()
                if isinstance(message, Stop):
                    return
                self.handle(message)
            self.step()

    def _decoding(self) -> bool:
        return any(self._unique_schedulers)

    def handle(self, message: DecodeBatch | Cancel) -> None:
        if isinstance(message, Cancel):
            self.cancel(message.row)
            return
        self._answered = set()
        try:
            self.admit(message)
        except Exception as e:  # fails this batch's rows, not the worker and all it holds
            log.exception("worker on %s could not take a batch", self.device)
            for row in message.rows:
                if row.id not in self._answered:
                    if message.key.task in self.schedulers:
                        self.schedulers[message.key.task].drop([row.id])
                    self._answer(row.id, Failed(f"{type(e).__name__}: {e}"), 1)

    def admit(self, batch: DecodeBatch) -> None:
        """Rows within the limits go to their scheduler; an empty row is answered at once."""
        task = batch.key.task
        pipeline = self.pipelines[task]
        sources = []
        for row, tokens in zip(
            batch.rows, pipeline.tokenize([r.text for r in batch.rows]), strict=True
        ):
            self.held[row.id] = _Held(task, tokens, row.stream)
            if self.max_tokens and len(tokens) > self.max_tokens:
                problem = f"is {len(tokens)} tokens; the limit is {self.max_tokens}"
                self._answer(row.id, Refused(problem), 1)
            elif not tokens:  # nothing to decode: the empty answer
                self._answer(row.id, Generation("", 0.0), 1)
            else:
                sources.append(self._source(pipeline, row, tokens))
        self.schedulers[task].add(batch.key, sources)

    @staticmethod
    def _source(pipeline: Pipeline, row: Row, tokens: list[str]) -> Source:
        from hanseq.engine.scheduler import Source

        return Source(row.id, pipeline.source_ids(tokens))

    def cancel(self, row: int) -> None:
        """A row that has not started is answered at once; a decoding one leaves its batch
        at the next step, with what it has (the scheduler asks ``_gone``)."""
        held = self.held.get(row)
        if held is None:
            return
        if self.schedulers[held.task].drop([row]):
            self._answer(row, Cancelled(), 1)
        else:
            self.cancelled.add(row)

    def _gone(self, rows: Sequence[int]) -> list[bool]:
        return [r in self.cancelled for r in rows]

    def step(self) -> None:
        """One step of every scheduler with work; each row that ends is answered."""
        for scheduler in self._unique_schedulers:
            if not scheduler:
                continue
            for decoded in scheduler.step(self._on_step):
                self._finish(decoded)

    def _on_step(self, rows: list[int], tokens: list[int]) -> None:
        """Streaming rows send their text so far, once per token."""
        from hanseq.engine.vocabulary import EOS_ID

        for row, token in zip(rows, tokens, strict=True):
            held = self.held[row]
            if held.stream and token != EOS_ID:
                held.ids.append(token)
                text = self.pipelines[held.task].text(held.task, held.ids)
                self._send(Partial(row, text))

    def _finish(self, decoded: Decoded) -> None:
        held = self.held[decoded.key]
        if decoded.error is not None:
            error = decoded.error
            self._answer(decoded.key, Failed(f"{type(error).__name__}: {error}"), 1)
            return
        result = self.pipelines[held.task].result(held.task, held.source, decoded.hypotheses)
        if decoded.hypotheses[0].attention is None:
            result.attention = None
        self._answer(decoded.key, result, decoded.batch_size)

    def _answer(self, row: int, answer: Answer, batch_size: int) -> None:
        held = self.held.pop(row, None)
        self.cancelled.discard(row)
        self._answered.add(row)
        ms = 0.0
        if held is not None and isinstance(answer, Generation):
            ms = 1000 * (time.perf_counter() - held.started)
        self._send(Done(row, answer, ms, batch_size))

    def _send(self, message: FromWorker) -> None:
        self.conn.send(message)
