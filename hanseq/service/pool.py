"""The worker pool: which workers exist, which have room, replacing dead ones, and reloads.

A reload starts a new generation of workers (the bundles loaded again and warmed) while the old
one keeps serving; when every new worker is ready the pool switches at once, and each old worker
stops once the rows it holds are answered. So no request is lost or answered by a half-loaded
model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import astuple
from typing import Any

from hanseq.engine.precision import choose
from hanseq.service.errors import Unavailable
from hanseq.service.protocol import TaskInfo
from hanseq.service.repository import Model
from hanseq.service.settings import Settings
from hanseq.service.workers import Worker, default_threads

log = logging.getLogger(__name__)


class WorkerPool:
    """The workers of one model version (each worker holds that bundle alone)."""

    def __init__(
        self, settings: Settings, model: Model, on_change: Callable[[], object] = lambda: None
    ):
        self.settings, self.model = settings, model
        self.on_change = on_change
        self.on_restart: Callable[[str], object] = lambda device: None  # a worker died (device)
        self.generation = 0
        self.workers: list[Worker] = []
        self._room = asyncio.Event()  # set when a worker may have room for more rows
        self._replacing: set[int] = set()
        self._tasks: dict[str, TaskInfo] = {}
        self._closed = False
        self._background: set[asyncio.Task] = set()  # referenced until done, as asyncio asks

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        """task -> {model_id, model_version, metric, valid_scores, ...} of the serving bundles."""
        return self._tasks

    def alive_count(self) -> int:
        return sum(1 for w in self.workers if w.alive and w.generation == self.generation)

    def busy_count(self) -> int:
        return sum(1 for w in self.workers if w.busy)

    async def start(self) -> None:
        self.workers = await self._start_generation(1)
        self.generation = 1
        self._tasks = self.workers[0].tasks
        self._room.set()
        self.on_change()

    async def _start_generation(self, generation: int) -> list[Worker]:
        devices = self.settings.device_list()
        cpu_workers = sum(1 for d in devices if d == "cpu")
        threads, why = default_threads(self.settings.cpu_threads, cpu_workers)
        if cpu_workers:
            log.info("CPU workers use %d torch thread(s) each: %s", threads, why)
        workers = [self._new_worker(d, threads, generation) for d in devices]
        results = await asyncio.gather(
            *(w.start(self.settings.worker_start_timeout_s) for w in workers),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for w in workers:
                w.kill()
            raise errors[0]
        for worker in workers:
            self._name(worker)
        return workers

    def _name(self, worker: Worker) -> None:
        """The tasks as served: under this model's name and version (the directory's), with
        the version the manifest records kept beside it."""
        key = self.model.key
        worker.tasks = {
            task: dataclasses.replace(
                info,
                model_name=key.name,
                model_version=key.version,
                bundle_version=info.model_version,
            )
            for task, info in worker.tasks.items()
        }

    def _precision(self, device: str) -> str:
        if device == "cpu":
            s = self.settings
            choice = choose("int8" if s.cpu_int8 else s.cpu_precision, device)
            if self.generation == 0:  # said once, at start-up
                log.info("CPU workers of %s decode in %s (%s)", self.model.key, *astuple(choice))
            return choice.precision
        return "fp16" if self.settings.half_precision else "fp32"

    def _new_worker(self, device: str, threads: int, generation: int) -> Worker:
        return Worker(
            device,
            self.model.path,
            threads if device == "cpu" else 0,
            self._precision(device),
            self.settings.max_batch_size,
            generation,
            self._changed,
            self.settings.max_input_tokens,
            self.settings.shortlist,
            (self.settings.log_level, self.settings.log_format),
        )

    async def acquire(self) -> Worker:
        """The live worker of the serving generation with the most room (waits for room)."""
        while True:
            room = [w for w in self.workers if self.current(w) and w.free > 0]
            if room:
                return max(room, key=lambda w: w.free)
            self._room.clear()
            await self._room.wait()

    def current(self, worker: Worker) -> bool:
        """Still a worker to send rows to: alive and of the serving generation."""
        return worker.alive and worker.generation == self.generation

    def _changed(self, worker: Worker) -> None:
        """A worker answered a row or died (called in the event loop)."""
        self._room.set()
        if worker.generation != self.generation:
            if not worker.busy:  # an old generation: done after its last row
                self._spawn(worker.stop())
        elif worker.dead:
            self._replace(worker)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _replace(self, dead: Worker) -> None:
        """Start a new worker on the dead one's device (once, however often it is reported)."""
        if id(dead) in self._replacing or self._closed:
            return
        self._replacing.add(id(dead))
        log.error("worker on %s (pid %s) died; starting a new one", dead.device, dead.pid)
        self.on_restart(dead.device)
        self.on_change()
        self._spawn(self._restart(dead))

    async def _restart(self, dead: Worker) -> None:
        dead.kill()
        while not self._closed and dead.generation == self.generation:
            worker = self._new_worker(dead.device, dead.threads, self.generation)
            try:
                await worker.start(self.settings.worker_start_timeout_s)
            except Unavailable as e:
                log.error("%s; retrying in 1 s", e)
                await asyncio.sleep(1.0)
                continue
            self._name(worker)
            self.workers = [w for w in self.workers if w is not dead] + [worker]
            self._room.set()
            log.info("worker on %s is back (pid %s)", worker.device, worker.pid)
            break
        self._replacing.discard(id(dead))
        self.on_change()

    async def reload(self, model: Model | None = None) -> dict[str, TaskInfo]:
        """Load the bundle again (as ``model`` now finds it) into new workers, then switch;
        the old ones drain."""
        generation, before = self.generation + 1, self.model
        self.model = model or self.model
        try:
            fresh = await self._start_generation(generation)
        except BaseException:  # the old ones keep serving
            self.model = before
            raise
        old = self.workers
        self.workers, self.generation, self._tasks = fresh, generation, fresh[0].tasks
        self._room.set()
        for worker in old:
            if not worker.busy:
                self._spawn(worker.stop())
        self.on_change()
        log.info("reloaded %s (%s)", self.model.key, ", ".join(self._tasks))
        return self._tasks

    async def stop(self) -> None:
        self._closed = True
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
