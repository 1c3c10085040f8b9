"""Workers: one process per device, each owning its own replica of every bundle.

A worker process loads and warms the bundles, then decodes batches sent over a pipe. Processes
rather than threads: the decoding loop does Python work at every step and must not hold the
GIL against the gRPC event loop, and a worker that crashes (or is killed) takes nothing else
down; the pool starts a new one and only the requests it held fail, with UNAVAILABLE.

Pipe protocol (pickled tuples):
  parent -> worker  ("batch", seq, task, texts, options, stream_rows) | ("stop",)
  worker -> parent  ("ready", tasks) | ("fatal", message)
                    ("partial", seq, row, text)   (rows in stream_rows, as they grow)
                    ("result", seq, results, compute_ms)   results[i]: dict | {"error": ...}
Cancellation needs no message: the parent writes ``seq`` into ``cancel[row]`` (shared memory)
and the worker drops that row at its next decoding step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from service.errors import Unavailable

log = logging.getLogger(__name__)
SPAWN = mp.get_context("spawn")  # never fork a process that has threads and CUDA state


def find_bundles(path: Path) -> list[Path]:
    """``path`` itself if it is a bundle, else the bundles directly inside it."""
    if (path / "bundle.json").is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"models path {path} does not exist")
    found = sorted(p for p in path.iterdir() if (p / "bundle.json").is_file())
    if not found:
        raise FileNotFoundError(f"no bundle (a directory with bundle.json) in {path}")
    return found


# ---- inside the worker process -------------------------------------------------------------


def worker_main(
    conn: Connection, device: str, models: str, threads: int, half: bool, cancel: Any
) -> None:
    """Entry point of a worker process."""
    try:
        runner = _Runner(device, Path(models), threads, half, cancel)
    except Exception as e:  # report why, then exit: the parent decides what to do
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    try:
        conn.send(("ready", runner.describe()))
    except OSError:  # the server stopped while we loaded
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        if message[0] == "stop":
            return
        _, seq, task, texts, options, stream_rows = message
        started = time.perf_counter()
        results = runner.run(conn, seq, task, texts, options, set(stream_rows))
        conn.send(("result", seq, results, 1000 * (time.perf_counter() - started)))


class _Runner:
    """The worker's loaded bundles and the code that decodes one batch."""

    def __init__(self, device: str, models: Path, threads: int, half: bool, cancel: Any):
        import torch

        from engine.bundle import load_bundle
        from engine.pipeline import Pipeline

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch, self.device, self.cancel = torch, torch.device(device), cancel
        self.pipelines: dict[str, Any] = {}
        self.bundles: dict[str, Any] = {}
        for path in find_bundles(models):
            bundle = load_bundle(path, self.device)
            if half and self.device.type == "cuda":
                bundle.model.half()  # search takes log-softmax in fp32
            for task in bundle.tasks:
                if task in self.pipelines:
                    raise ValueError(
                        f"task {task!r} is in two bundles: {self.bundles[task].path} and {path}"
                    )
                self.pipelines[task] = Pipeline.from_bundle(bundle, batch_size=1 << 16)
                self.pipelines[task].warn_truncated = False  # reported per request instead
                self.bundles[task] = bundle
        self._warm_up()

    def _warm_up(self) -> None:
        """First calls are slow (allocation, kernel selection): pay for them before SERVING."""
        from engine.options import SearchOptions

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
                "context_turns": int(entry.get("context_turns", 0)),
                "max_target_length": int(bundle.manifest.get("max_target_length", 100)),
            }
        return out

    def run(
        self,
        conn: Connection,
        seq: int,
        task: str,
        texts: list[str],
        options: dict[str, Any],
        stream_rows: set[int],
    ) -> list[dict[str, Any]]:
        from engine.options import SearchOptions

        opts = SearchOptions(**options)

        def cancelled(rows: list[int]) -> Callable[[], list[bool]]:
            return lambda: [self.cancel[r] == seq for r in rows]

        def partial(rows: list[int]) -> Callable[[int, str], None]:
            def send(i: int, text: str) -> None:
                if rows[i] in stream_rows:
                    conn.send(("partial", seq, rows[i], text))

            return send

        return self._split_run(task, texts, list(range(len(texts))), opts, cancelled, partial)

    def _split_run(self, task, texts, rows, opts, cancelled, partial) -> list[dict[str, Any]]:
        """Decode; a batch that fails (out of GPU memory, say) is split in halves and retried,
        so only a request that fails alone is failed."""
        try:
            generations = self.pipelines[task].generate(
                task, texts, opts, cancelled=cancelled(rows), on_partial=partial(rows)
            )
            return [_as_dict(g, opts.return_attention) for g in generations]
        except Exception as e:
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            if len(texts) == 1:
                log.exception("request failed alone in worker on %s", self.device)
                return [{"error": f"{type(e).__name__}: {e}"}]
            half = len(texts) // 2
            return self._split_run(
                task, texts[:half], rows[:half], opts, cancelled, partial
            ) + self._split_run(task, texts[half:], rows[half:], opts, cancelled, partial)


def _as_dict(generation: Any, with_attention: bool) -> dict[str, Any]:
    out = dataclasses.asdict(generation)
    if not with_attention:
        out["attention"] = None
    return out


# ---- in the server process -----------------------------------------------------------------


class WorkerDied(Unavailable):
    """The worker process ended while it held these requests; retrying is safe."""


class Worker:
    """The server's handle on one worker process; decodes one batch at a time."""

    def __init__(
        self, device: str, models: Path, threads: int, half: bool, max_rows: int, generation: int
    ):
        self.device, self.models, self.threads, self.half = device, models, threads, half
        self.generation = generation
        self.cancel = SPAWN.RawArray("q", max_rows)  # cancel[row] == seq: drop that row
        self.tasks: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self.busy = False
        self._process: Any = None
        self._conn: Connection | None = None
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"worker-{device}")

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float) -> None:
        parent, child = SPAWN.Pipe()
        self._process = SPAWN.Process(
            target=worker_main,
            args=(child, self.device, str(self.models), self.threads, self.half, self.cancel),
            name=f"hanseq-worker-{self.device}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn = parent
        loop = asyncio.get_running_loop()
        try:
            message = await asyncio.wait_for(loop.run_in_executor(self._io, self._recv), timeout)
        except (TimeoutError, WorkerDied) as e:
            self.kill()
            raise Unavailable(f"worker on {self.device} did not start: {e}") from None
        if message[0] != "ready":
            self.kill()
            raise Unavailable(f"worker on {self.device} could not load the models: {message[1]}")
        self.tasks = message[1]

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()  # type: ignore[union-attr]
        except (EOFError, OSError):
            raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died") from None

    def begin(self) -> int:
        """The number of the next batch: cancellations name it, so a late one misses."""
        self.seq += 1
        return self.seq

    async def run(
        self,
        seq: int,
        task: str,
        texts: list[str],
        options: dict[str, Any],
        stream_rows: list[int],
        on_partial: Callable[[int, str], None],
    ) -> tuple[list[dict[str, Any]], float]:
        """Decode batch ``seq`` (from ``begin``) -> (one result per text, compute ms).
        Raises WorkerDied."""
        loop = asyncio.get_running_loop()

        def roundtrip() -> tuple[list[dict[str, Any]], float]:
            try:
                self._conn.send(("batch", seq, task, texts, options, stream_rows))  # type: ignore
            except (OSError, ValueError):
                raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died") from None
            while True:
                message = self._recv()
                if message[0] == "partial":
                    loop.call_soon_threadsafe(on_partial, message[2], message[3])
                elif message[0] == "result" and message[1] == seq:
                    return message[2], message[3]

        return await loop.run_in_executor(self._io, roundtrip)

    def cancel_row(self, seq: int, row: int) -> None:
        if 0 <= row < len(self.cancel):
            self.cancel[row] = seq

    async def stop(self, timeout: float = 5.0) -> None:
        if self._conn is not None and self.alive:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._process.join, timeout)
        self.kill()
        self._io.shutdown(wait=False, cancel_futures=True)

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def default_threads(settings_threads: int, cpu_workers: int) -> int:
    if settings_threads > 0:
        return settings_threads
    return max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
