"""Workers: one process per device, each owning its own replica of every bundle.

Processes rather than threads: the decoding loop does Python work at every step and must not
hold the GIL against the gRPC event loop, and a worker that crashes (or is killed) takes
nothing else down; the pool starts a new one and only the requests it held fail, with
UNAVAILABLE. What runs inside the process is service/worker_process.py (with the pipe
protocol); this file is the server's side: a handle that sends batches and routes results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hanseq.service.errors import ServiceError, Unavailable
from hanseq.service.worker_process import worker_main

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


# ---- in the server process -----------------------------------------------------------------


class WorkerDied(Unavailable):
    """The worker process ended while it held these requests; retrying is safe."""


@dataclass
class _Job:
    """One batch sent to a worker: where its rows' partial outputs and results go."""

    on_partial: Callable[[int, str], None]
    on_done: Callable[[int, dict[str, Any], float, int], None]  # row, result, ms, batch size
    on_error: Callable[[ServiceError], None]  # the worker died holding it
    remaining: int


class Worker:
    """The server's handle on one worker process, which decodes up to ``capacity`` rows at
    once and takes new ones while it decodes (continuous batching)."""

    def __init__(
        self,
        device: str,
        models: Path,
        threads: int,
        precision: str,  # fp32 | fp16 (CUDA) | int8 (CPU decoder products)
        capacity: int,
        generation: int,
        on_change: Callable[[Worker], None] = lambda w: None,
        max_tokens: int = 0,
        shortlist: bool = True,
    ):
        self.device, self.models, self.threads = device, models, threads
        self.precision = precision
        self.max_tokens = max_tokens  # longest input in tokens (0 = the bundle's own cut)
        self.shortlist = shortlist  # use the bundles' vocabulary-shortlist tables
        self.capacity, self.generation, self.on_change = capacity, generation, on_change
        self.tasks: dict[str, dict[str, Any]] = {}
        self.load = 0  # rows sent and not yet answered
        self.seq = 0
        self.dead = False
        self._jobs: dict[int, _Job] = {}
        self._process: Any = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> bool:
        return not self.dead and self._process is not None and self._process.is_alive()

    @property
    def busy(self) -> bool:
        return self.load > 0

    @property
    def free(self) -> int:
        return self.capacity - self.load

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float) -> None:
        parent, child = SPAWN.Pipe()
        self._process = SPAWN.Process(
            target=worker_main,
            args=(
                child,
                self.device,
                str(self.models),
                self.threads,
                self.precision,
                self.max_tokens,
                self.shortlist,
            ),
            name=f"hanseq-worker-{self.device}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn, self._loop = parent, asyncio.get_running_loop()
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(self._first_message), timeout)
        except (TimeoutError, EOFError, OSError) as e:
            self.kill()
            parent.close()
            raise Unavailable(f"worker on {self.device} did not start: {e or 'timeout'}") from None
        if ready[0] != "ready":
            self.kill()
            parent.close()
            raise Unavailable(f"worker on {self.device} could not load the models: {ready[1]}")
        self.tasks = ready[1]
        threading.Thread(target=self._read, name=f"worker-{self.device}", daemon=True).start()

    def _first_message(self) -> tuple:
        return self._conn.recv()  # type: ignore[union-attr]

    def submit(
        self,
        task: str,
        texts: list[str],
        options: dict[str, Any],
        stream_rows: list[int],
        on_partial: Callable[[int, str], None],
        on_done: Callable[[int, dict[str, Any], float, int], None],
        on_error: Callable[[ServiceError], None],
    ) -> int:
        """Send a batch -> its number (cancellations name it). Results come back row by row,
        through ``on_done``, in the event loop. Raises WorkerDied."""
        if self.dead or self._conn is None:
            raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died")
        self.seq += 1
        try:
            self._conn.send(("batch", self.seq, task, texts, options, stream_rows))
        except (OSError, ValueError):
            raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died") from None
        self._jobs[self.seq] = _Job(on_partial, on_done, on_error, len(texts))
        self.load += len(texts)
        return self.seq

    def cancel_row(self, seq: int, row: int) -> None:
        if seq in self._jobs and self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("cancel", seq, row))

    def _read(self) -> None:
        """The reader thread: every message goes to the event loop, in order; at the end of
        the pipe (the process died or stopped) the jobs it held fail."""
        conn, loop = self._conn, self._loop
        assert conn is not None and loop is not None
        try:
            while True:
                message = conn.recv()
                loop.call_soon_threadsafe(self._dispatch, message)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()  # here, not elsewhere: a closed descriptor's number can be reused
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(self._died)

    def _dispatch(self, message: tuple) -> None:
        job = self._jobs.get(message[1])
        if job is None:
            return
        if message[0] == "partial":
            job.on_partial(message[2], message[3])
            return
        _, seq, row, result, compute_ms, batch_size = message
        self.load -= 1
        job.remaining -= 1
        if job.remaining == 0:
            del self._jobs[seq]
        job.on_done(row, result, compute_ms, batch_size)
        self.on_change(self)

    def _died(self) -> None:
        self.dead = True
        jobs, self._jobs, self.load = self._jobs, {}, 0
        for job in jobs.values():
            job.on_error(WorkerDied(f"worker on {self.device} (pid {self.pid}) died"))
        self.on_change(self)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._conn is not None and self.alive:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
            await asyncio.to_thread(self._process.join, timeout)
        self.kill()

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def default_threads(settings_threads: int, cpu_workers: int) -> int:
    if settings_threads > 0:
        return settings_threads
    return max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
