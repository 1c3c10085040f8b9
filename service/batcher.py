"""Dynamic micro-batching: requests of one task and identical decoding options decode together.

A batch leaves when it is full (``max_batch_size``) or its oldest request has waited
``max_queue_delay_ms``, and only when a worker is free, so under load batches grow by themselves.
When more requests wait than fit, the oldest goes with its nearest neighbours in length (less
padding, nobody starves). A request whose deadline has passed, or whose caller has gone, is
dropped before it costs any compute; one cancelled while decoding leaves at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceeded, Overloaded, ServiceError, Unavailable
from service.pool import WorkerPool
from service.settings import Settings
from service.workers import Worker

log = logging.getLogger(__name__)
Key = tuple[str, tuple[tuple[str, Any], ...]]


@dataclass
class Outcome:
    result: dict[str, Any]  # a Generation as a dict (see engine.pipeline)
    queue_ms: float
    compute_ms: float
    task_info: dict[str, Any]  # the model that decoded it (id, version, ...)
    batch_size: int = 1


@dataclass(eq=False)
class Request:
    task: str
    text: str
    options: dict[str, Any]  # SearchOptions fields
    deadline: float | None = None  # time.monotonic(); None = no deadline
    on_partial: Callable[[str], None] | None = None
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    partials: int = 0  # partial outputs the worker sent (streams), cancelled or not
    _worker: Worker | None = None
    _seq: int = 0
    _row: int = 0

    @property
    def key(self) -> Key:
        return self.task, tuple(sorted(self.options.items()))

    def cancel(self) -> None:
        """The caller is gone: drop it from the queue, or from its batch at the next step."""
        self.cancelled = True
        if self._worker is not None and not self.future.done():
            self._worker.cancel_row(self._seq, self._row)


class Batcher:
    def __init__(self, pool: WorkerPool, settings: Settings):
        self.pool, self.settings = pool, settings
        self._queues: dict[Key, deque[Request]] = {}
        self._queued: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def queued(self, task: str) -> int:
        return self._queued[task]

    def submit(self, request: Request) -> asyncio.Future:
        if self._queued[request.task] >= self.settings.max_queue_size:
            raise Overloaded(
                f"the {request.task} queue is full ({self.settings.max_queue_size} requests "
                "waiting); retry with backoff"
            )
        self._queues.setdefault(request.key, deque()).append(request)
        self._queued[request.task] += 1
        self._wake.set()
        return request.future

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for queue in self._queues.values():
            for request in queue:
                if not request.future.done():
                    request.future.set_exception(Unavailable("the server is shutting down"))
        self._queues.clear()

    async def _run(self) -> None:
        while True:
            worker = await self.pool.acquire()
            try:
                key, batch = await self._take()
            except asyncio.CancelledError:
                self.pool.release(worker)
                raise
            while not self.pool.current(worker):  # a reload or a death while we waited
                self.pool.release(worker)
                worker = await self.pool.acquire()
            task = asyncio.create_task(self._execute(worker, key[0], batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _take(self) -> tuple[Key, list[Request]]:
        """Wait until some queue has a batch ready; take it."""
        delay = self.settings.max_queue_delay_ms / 1000
        while True:
            self._drop_dead()
            waiting = [k for k, q in self._queues.items() if q]
            if not waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = min(waiting, key=lambda k: self._queues[k][0].enqueued)
            queue = self._queues[key]
            due = queue[0].enqueued + delay
            if len(queue) >= self.settings.max_batch_size or time.monotonic() >= due:
                return key, self._select(key)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due - time.monotonic())

    def _select(self, key: Key) -> list[Request]:
        queue, size = self._queues[key], self.settings.max_batch_size
        if len(queue) <= size:
            batch = list(queue)
            queue.clear()
        else:  # the oldest and its nearest neighbours in length
            oldest = queue[0]
            rest = sorted(list(queue)[1:], key=lambda r: abs(len(r.text) - len(oldest.text)))
            batch = [oldest, *rest[: size - 1]]
            chosen = set(map(id, batch))
            self._queues[key] = deque(r for r in queue if id(r) not in chosen)
        self._queued[key[0]] -= len(batch)
        return batch

    def _drop_dead(self) -> None:
        now = time.monotonic()
        for key, queue in self._queues.items():
            if not any(r.cancelled or (r.deadline and r.deadline <= now) for r in queue):
                continue
            for r in queue:
                if r.deadline and r.deadline <= now and not r.future.done():
                    r.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            kept = deque(r for r in queue if not r.future.done() and not r.cancelled)
            self._queued[key[0]] -= len(queue) - len(kept)
            self._queues[key] = kept

    async def _execute(self, worker: Worker, task: str, batch: list[Request]) -> None:
        started = time.monotonic()
        seq = worker.begin()
        for row, request in enumerate(batch):
            request._worker, request._seq, request._row = worker, seq, row

        def on_partial(row: int, text: str) -> None:
            request = batch[row]
            request.partials += 1
            if request.on_partial and not request.cancelled:
                request.on_partial(text)

        stream_rows = [i for i, r in enumerate(batch) if r.on_partial]
        try:
            results, compute_ms = await worker.run(
                seq, task, [r.text for r in batch], batch[0].options, stream_rows, on_partial
            )
        except ServiceError as e:  # the worker died: these requests may be retried
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(e)
            return
        finally:
            self.pool.release(worker)
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if "error" in result:
                log.error("decoding failed for one request: %s", result["error"])
                request.future.set_exception(RuntimeError(result["error"]))
                continue
            queue_ms = 1000 * (started - request.enqueued)
            request.future.set_result(
                Outcome(result, queue_ms, compute_ms, worker.tasks[task], len(batch))
            )
