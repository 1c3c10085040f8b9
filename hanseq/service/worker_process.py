"""Inside a worker process: the loaded bundles and the decoding loop.

Greedy and sampling requests decode with continuous batching: a request that arrives while
others are decoding joins them before the next step (one RunningBatch per task and set of
options), and each row's result goes back the moment it ends, so a short answer never waits
for a long one. Beam search decodes each batch whole, between two steps of the running ones.

Pipe protocol (pickled tuples):
  parent -> worker  ("batch", seq, task, texts, options, stream_rows)
                    ("cancel", seq, row)  drop that row at its next step
                    ("stop",)
  worker -> parent  ("ready", tasks) | ("fatal", message)
                    ("partial", seq, row, text)   (rows in stream_rows, as they grow)
                    ("done", seq, row, result, compute_ms, batch_size)
                    result: a Generation as a dict, or {"error": message}
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
BatchKey = tuple[str, tuple[tuple[str, Any], ...]]


def worker_main(
    conn: Connection,
    device: str,
    models: str,
    threads: int,
    precision: str,
    max_tokens: int = 0,
    shortlist: bool = True,
) -> None:
    """Entry point of a worker process."""
    from hanseq.service.workers import find_bundles

    try:
        runner = Runner(
            device, find_bundles(Path(models)), threads, precision, conn, max_tokens, shortlist
        )
    except Exception as e:  # report why, then exit: the parent decides what to do
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    try:
        conn.send(("ready", runner.describe()))
        runner.serve()
    except (EOFError, OSError):  # the server went away
        return


@dataclass
class _Row:
    """One request being decoded: where its answer goes and what it needs to become one."""

    seq: int
    row: int
    task: str
    source: list[str]
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    batch_size: int = 1  # rows decoding together when it joined, itself included
    ids: list[int] = field(default_factory=list)  # streamed so far


@dataclass
class _BeamRow:
    """A beam search request waiting for its turn (beam search decodes whole groups)."""

    seq: int
    row: int
    task: str
    text: str
    options: tuple  # sorted items: rows with equal options are decoded together
    search: Any  # SearchOptions


BEAM_GROUP = 8  # beam rows decoded at once: between groups the loop reads cancellations


class Runner:
    """The worker's loaded bundles, its running batches, and the loop that feeds them."""

    def __init__(
        self,
        device: str,
        bundles: list[Path],
        threads: int,
        precision: str,  # fp32 | fp16 (CUDA) | int8 (CPU decoder products)
        conn: Any,
        max_tokens: int = 0,
        shortlist: bool = True,
    ):
        import torch

        from hanseq.engine.bundle import load_bundle
        from hanseq.engine.pipeline import Pipeline
        from hanseq.engine.quantize import quantize_decoders
        from hanseq.engine.vocabulary import EOS_ID

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch, self.device, self.conn, self.eos = torch, torch.device(device), conn, EOS_ID
        self.max_tokens = max_tokens
        self.pipelines: dict[str, Any] = {}
        self.bundles: dict[str, Any] = {}
        for path in bundles:
            bundle = load_bundle(path, self.device, shortlist)
            if precision == "fp16" and self.device.type == "cuda":
                bundle.model.half()  # search takes log-softmax in fp32
            if precision == "int8" and self.device.type == "cpu":
                quantize_decoders(bundle.model)
            for task in bundle.tasks:
                if task in self.pipelines:
                    raise ValueError(
                        f"task {task!r} is in two bundles: {self.bundles[task].path} and {path}"
                    )
                self.pipelines[task] = Pipeline.from_bundle(bundle, batch_size=1 << 16)
                self.pipelines[task].warn_truncated = False  # reported per request instead
                self.bundles[task] = bundle
        self.running: dict[BatchKey, list[Any]] = {}  # RunningBatches, usually one per key
        self.rows: dict[int, _Row] = {}
        self.beams: deque[_BeamRow] = deque()
        self._answered: set[tuple[int, int]] = set()  # (seq, row) sent while handling one message
        self._next_key = 0
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

    def describe(self) -> dict[str, dict[str, Any]]:
        out = {}
        for task, bundle in self.bundles.items():
            entry = bundle.manifest.get("tasks", {}).get(task, {})
            out[task] = {
                "model_id": bundle.id,
                "model_version": bundle.version,
                "metric": entry.get("metric", ""),
                "valid_scores": entry.get("valid_scores", {}),
                "context_turns": bundle.context_turns(task),
                "decoding": bundle.decoding(task),
                "max_target_length": int(bundle.manifest.get("max_target_length", 100)),
            }
        return out

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> None:
        """Read what the server sent (waiting only when nothing decodes), then step."""
        while True:
            while not (self.running or self.beams) or self.conn.poll(0):
                message = self.conn.recv()
                if message[0] == "stop":
                    return
                self._handle_safely(message)
            self.step()

    def _handle_safely(self, message: tuple) -> None:
        """A message this loop cannot handle fails its own rows, not the whole worker (and
        with it every other request it holds)."""
        self._answered = set()
        try:
            self.handle(message)
        except Exception as e:
            log.exception("worker on %s could not take a request", self.device)
            if message[0] == "batch":
                _, seq, _, texts, _, _ = message
                taken = {(info.seq, info.row) for info in self.rows.values()}
                taken |= {(b.seq, b.row) for b in self.beams} | self._answered
                for row in range(len(texts)):
                    if (seq, row) not in taken:
                        self._send(seq, row, {"error": f"{type(e).__name__}: {e}"}, 0.0, 1)

    def handle(self, message: tuple) -> None:
        if message[0] == "cancel":
            _, seq, row = message
            for key, info in self.rows.items():
                if info.seq == seq and info.row == row:
                    for batch in self._batches():
                        batch.cancel([key])
            if any((b.seq, b.row) == (seq, row) for b in self.beams):
                self.beams = deque(b for b in self.beams if (b.seq, b.row) != (seq, row))
                self._send(seq, row, {"cancelled": True}, 0.0, 1)  # never decoded; answered
            return
        _, seq, task, texts, options, stream_rows = message
        self.admit(seq, task, texts, options, set(stream_rows))

    def admit(
        self, seq: int, task: str, texts: list[str], options: dict[str, Any], stream: set[int]
    ) -> None:
        """Greedy / sampling rows join the running batch of their options; beam decodes now."""
        from hanseq.engine.continuous import RunningBatch
        from hanseq.engine.options import SearchOptions
        from hanseq.engine.pipeline import Generation

        opts = SearchOptions(**options)
        pipeline = self.pipelines[task]
        sources = self._within_limit(seq, pipeline.tokenize(texts))
        if opts.beam_size > 1:
            same = tuple(sorted(options.items()))
            self.beams.extend(_BeamRow(seq, r, task, texts[r], same, opts) for r in sources)
            return
        keys = []
        for row, source in sources.items():
            if not source:  # nothing to decode: the empty answer, at once
                self._send(seq, row, _as_dict(Generation("", 0.0), False), 0.0, 1)
                continue
            key, self._next_key = self._next_key, self._next_key + 1
            self.rows[key] = _Row(seq, row, task, source, row in stream)
            keys.append(key)
        if not keys:  # every row answered already: no batch to start (an empty one never ends)
            return
        batches = self.running.setdefault((task, tuple(sorted(options.items()))), [])
        if not batches:
            batches.append(RunningBatch(pipeline.model, task, opts))
        self._join(batches[0], keys)

    def _within_limit(self, seq: int, sources: list[list[str]]) -> dict[int, list[str]]:
        """The rows within max_input_tokens; the others are answered "invalid" at once."""
        kept = {}
        for row, source in enumerate(sources):
            if self.max_tokens and len(source) > self.max_tokens:
                problem = f"is {len(source)} tokens; the limit is {self.max_tokens}"
                self._send(seq, row, {"invalid": problem}, 0.0, 1)
            else:
                kept[row] = source
        return kept

    def _join(self, batch: Any, keys: list[int]) -> None:
        """Join; a group whose encoding fails (out of memory, say) is split and retried, so
        only a request that fails alone is failed."""
        if not keys:
            return
        info = self.rows[keys[0]]
        try:
            self.pipelines[info.task].join(batch, [self.rows[k].source for k in keys], keys)
        except Exception as e:
            if len(keys) == 1:
                self._recover()
                self._fail(keys[0], e)
                return
        else:
            for key in keys:
                self.rows[key].batch_size = len(batch)
            return
        # Retried only here, past the except block: until it ends, the exception's traceback
        # holds the failed attempt's tensors (on a GPU that ran out, their memory).
        self._recover()
        half = len(keys) // 2
        self._join(batch, keys[:half])
        self._join(batch, keys[half:])

    def step(self) -> None:
        """One decoding step of every running batch, and one group of beam rows."""
        self._step_running()
        self._beam_group()

    def _beam_group(self) -> None:
        """Up to BEAM_GROUP waiting beam rows of the first one's task and options, decoded
        whole: a huge beam request neither stalls the greedy rows for long nor, once its
        caller has gone, goes on costing the worker past the group in hand."""
        if not self.beams:
            return
        first = self.beams[0]
        group = [b for b in self.beams if (b.task, b.options) == (first.task, first.options)]
        group = group[:BEAM_GROUP]
        taken = {(b.seq, b.row) for b in group}
        self.beams = deque(b for b in self.beams if (b.seq, b.row) not in taken)
        started = time.perf_counter()
        results = self._split_run(first.task, [b.text for b in group], first.search)
        ms = 1000 * (time.perf_counter() - started)
        for beam, result in zip(group, results, strict=True):
            self._send(beam.seq, beam.row, result, ms, len(group))

    def _step_running(self) -> None:
        """A batch whose step fails is split in two (each goes on), and a row that fails
        alone is failed."""
        for key, batches in list(self.running.items()):
            for batch in list(batches):
                if not batch:  # nothing left in it (all its rows left): drop, never step
                    batches.remove(batch)
                    continue
                try:
                    finished = batch.step(self._on_step)
                except Exception as e:
                    self._recover()
                    if len(batch) == 1:
                        self._fail(batch.keys[0], e)
                        batches.remove(batch)
                    else:
                        batches.append(batch.split())
                    continue
                for done in finished:
                    self._finish(done)
                if not batch:
                    batches.remove(batch)
            if not batches:
                del self.running[key]

    def _on_step(self, keys: list[int], tokens: list[int]) -> None:
        """Streaming rows send their text so far, once per token."""
        for key, token in zip(keys, tokens, strict=True):
            info = self.rows[key]
            if info.stream and token != self.eos:
                info.ids.append(token)
                text = self.pipelines[info.task].text(info.task, info.ids)
                self.conn.send(("partial", info.seq, info.row, text))

    def _finish(self, done: Any) -> None:
        info = self.rows.pop(done.key)
        result = self.pipelines[info.task].result(info.task, info.source, [done.hypothesis])
        with_attention = done.hypothesis.attention is not None
        ms = 1000 * (time.perf_counter() - info.started)
        self._send(info.seq, info.row, _as_dict(result, with_attention), ms, info.batch_size)

    def _fail(self, key: int, error: Exception) -> None:
        log.error("request failed alone in worker on %s", self.device, exc_info=error)
        info = self.rows.pop(key)
        self._send(info.seq, info.row, {"error": f"{type(error).__name__}: {error}"}, 0.0, 1)

    def _send(self, seq: int, row: int, result: dict, ms: float, batch_size: int) -> None:
        self._answered.add((seq, row))
        self.conn.send(("done", seq, row, result, ms, batch_size))

    def _recover(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _batches(self) -> list[Any]:
        return [b for batches in self.running.values() for b in batches]

    def _split_run(self, task: str, texts: list[str], opts: Any) -> list[dict[str, Any]]:
        """Beam search of a whole batch; one that fails is split in halves and retried."""
        if not texts:
            return []
        try:
            generations = self.pipelines[task].generate(task, texts, opts)
            return [_as_dict(g, opts.return_attention) for g in generations]
        except Exception as e:
            if len(texts) == 1:
                self._recover()
                log.exception("request failed alone in worker on %s", self.device)
                return [{"error": f"{type(e).__name__}: {e}"}]
        # Split past the except block, whose traceback holds the failed attempt's tensors.
        self._recover()
        half = len(texts) // 2
        return self._split_run(task, texts[:half], opts) + self._split_run(task, texts[half:], opts)


def _as_dict(generation: Any, with_attention: bool) -> dict[str, Any]:
    out = dataclasses.asdict(generation)
    if not with_attention:
        out["attention"] = None
    return out
