"""Workers: one process per device, each owning its own replica of every bundle.

Processes rather than threads: the decoding loop does Python work at every step and must not
hold the GIL against the gRPC event loop, and a worker that crashes (or is killed) takes
nothing else down; the pool starts a new one and only the requests it held fail, with
UNAVAILABLE. What runs inside the process is service/worker_process.py, the messages on the
pipe are service/protocol.py; this file is the server's side: a handle that sends batches and
routes each row's answer to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from hanseq.engine.options import BatchKey
from hanseq.service.cpus import usable_cpus
from hanseq.service.errors import ServiceError, Unavailable
from hanseq.service.protocol import (
    Cancel,
    DecodeBatch,
    Done,
    Fatal,
    FromWorker,
    Partial,
    Ready,
    Row,
    Stop,
    TaskInfo,
)
from hanseq.service.worker_process import worker_main

log = logging.getLogger(__name__)
SPAWN = mp.get_context("spawn")
R = TypeVar(
    "R"
)  # the caller's object for a row  # never fork a process that has threads and CUDA state


# ---- in the server process -----------------------------------------------------------------


class WorkerDied(Unavailable):
    """The worker process ended while it held these requests; retrying is safe."""


@dataclass
class _Job:
    """Where the rows of one batch sent go: their partial outputs, answers, or the worker's
    death. ``owners`` maps each row's id to the caller's object for it (a batcher Request)."""

    owners: dict[int, Any]
    on_partial: Callable[[Any, str], None]
    on_done: Callable[[Any, Done], None]
    on_error: Callable[[Any, ServiceError], None]  # the worker died holding it


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
        logging_setup: tuple[str, str] = ("WARNING", "auto"),
    ):
        self.device, self.models, self.threads = device, models, threads
        self.logging_setup = logging_setup  # (level, format): the worker logs as the server
        self.precision = precision
        self.max_tokens = max_tokens  # longest input in tokens (0 = the bundle's own cut)
        self.shortlist = shortlist  # use the bundles' vocabulary-shortlist tables
        self.capacity, self.generation, self.on_change = capacity, generation, on_change
        self.tasks: dict[str, TaskInfo] = {}
        self.load = 0  # rows sent and not yet answered
        self.dead = False
        self._next_row = 0
        self._jobs: dict[int, _Job] = {}  # row id -> its batch's job
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
                self.logging_setup,
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
        if not isinstance(ready, Ready):
            self.kill()
            parent.close()
            message = ready.message if isinstance(ready, Fatal) else repr(ready)
            raise Unavailable(f"worker on {self.device} could not load the models: {message}")
        self.tasks = ready.tasks
        threading.Thread(target=self._read, name=f"worker-{self.device}", daemon=True).start()

    def _first_message(self) -> FromWorker:
        return self._conn.recv()  # type: ignore[union-attr]

    def submit(
        self,
        key: BatchKey,
        rows: Sequence[tuple[R, str, bool]],
        on_partial: Callable[[R, str], None],
        on_done: Callable[[R, Done], None],
        on_error: Callable[[R, ServiceError], None],
    ) -> list[int]:
        """Send (owner, text, stream) rows of one task and options -> their row ids (which
        cancellations name). Answers come back row by row, through ``on_done(owner, done)``,
        in the event loop. Raises WorkerDied."""
        if self.dead or self._conn is None:
            raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died")
        ids = list(range(self._next_row, self._next_row + len(rows)))
        self._next_row += len(rows)
        batch = DecodeBatch(
            key, [Row(i, text, stream) for i, (_, text, stream) in zip(ids, rows, strict=True)]
        )
        try:
            self._conn.send(batch)
        except (OSError, ValueError):
            raise WorkerDied(f"worker on {self.device} (pid {self.pid}) died") from None
        job = _Job(
            {i: owner for i, (owner, _, _) in zip(ids, rows, strict=True)},
            on_partial,
            on_done,
            on_error,
        )
        self._jobs.update({i: job for i in ids})
        self.load += len(rows)
        return ids

    def cancel_row(self, row: int) -> None:
        if row in self._jobs and self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(Cancel(row))

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

    def _dispatch(self, message: FromWorker) -> None:
        if not isinstance(message, Partial | Done):
            return
        job = self._jobs.get(message.row)
        if job is None:
            return
        if isinstance(message, Partial):
            job.on_partial(job.owners[message.row], message.text)
            return
        del self._jobs[message.row]
        self.load -= 1
        job.on_done(job.owners.pop(message.row), message)
        self.on_change(self)

    def _died(self) -> None:
        self.dead = True
        jobs, self._jobs, self.load = self._jobs, {}, 0
        error = WorkerDied(f"worker on {self.device} (pid {self.pid}) died")
        for row, job in jobs.items():
            job.on_error(job.owners.pop(row), error)
        self.on_change(self)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._conn is not None and self.alive:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(Stop())
            await asyncio.to_thread(self._process.join, timeout)
        self.kill()

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def default_threads(settings_threads: int, cpu_workers: int) -> tuple[int, str]:
    """Torch threads per CPU worker and why: the setting, else the CPUs this process may use
    (its cgroup quota counted, service/cpus.py) shared among the CPU workers."""
    if settings_threads > 0:
        return settings_threads, "cpu_threads (HANSEQ_CPU_THREADS)"
    cpus, why = usable_cpus()
    return max(1, cpus // max(cpu_workers, 1)), f"{why}, {max(cpu_workers, 1)} CPU worker(s)"
