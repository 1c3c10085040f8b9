"""Dynamic batching: requests of one task and identical decoding options decode together.

A worker decodes up to ``max_batch_size`` rows at once and takes new rows while it decodes
(continuous batching, service/worker_process.py). A batch leaves the queue when it fills the
room a worker has, or when its oldest request has waited ``max_queue_delay_ms``; requests
joining a worker that is already decoding go in groups (a quarter of its rows, or after
``join_delay_ms``), because each join costs the running batch a re-concatenation. When more
requests wait than fit, the oldest goes with its nearest neighbours in length (less padding,
nobody starves). A request whose deadline has passed, or whose caller has gone, is dropped
before it costs any compute; one cancelled while decoding leaves at the next step. Results
come back row by row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hanseq.engine.options import BatchKey, Generation, SearchOptions
from hanseq.service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Overloaded,
    ServiceError,
    Unavailable,
)
from hanseq.service.metrics import Metrics
from hanseq.service.pool import WorkerPool
from hanseq.service.protocol import Cancelled, Done, Failed, Refused, TaskInfo
from hanseq.service.settings import Settings
from hanseq.service.workers import Worker

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """A decoded request: its Generation and how it was made."""

    result: Generation
    queue_ms: float
    compute_ms: float
    task_info: TaskInfo  # the model that decoded it (id, version, ...)
    batch_size: int = 1


@dataclass(eq=False)
class Request:
    """One text to decode, from the servicer to its answer: the row's one identity on the
    server (on the pipe and in the worker it is ``row_id``)."""

    task: str
    text: str
    options: SearchOptions
    deadline: float | None = None  # time.monotonic(); None = no deadline
    on_partial: Callable[[str], None] | None = None
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    partials: int = 0  # partial outputs the worker sent (streams), cancelled or not
    sent: float = 0.0  # time.monotonic() when it left the queue
    _worker: Worker | None = None
    row_id: int = -1  # its id on the worker's pipe, once sent

    @property
    def key(self) -> BatchKey:
        return BatchKey(self.task, self.options)

    def cancel(self) -> None:
        """The caller is gone: drop it from the queue, or from its batch at the next step."""
        self.cancelled = True
        if self._worker is not None and not self.future.done():
            self._worker.cancel_row(self.row_id)


class Batcher:
    def __init__(self, pool: WorkerPool, settings: Settings, metrics: Metrics | None = None):
        self.pool, self.settings, self.metrics = pool, settings, metrics
        self._queues: dict[BatchKey, deque[Request]] = {}
        self._queued: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._stopped = False

    def queued(self, task: str) -> int:
        return self._queued[task]

    def queued_total(self) -> int:
        return sum(self._queued.values())

    def submit(self, request: Request) -> asyncio.Future:
        if self._stopped:  # its model was unloaded after the request was routed to it
            raise Unavailable("the model version it was routed to is no longer served; retry")
        if self._queued[request.task] >= self.settings.max_queue_size:
            wait = self.settings.retry_after_ms
            raise Overloaded(
                f"the {request.task} queue is full ({self.settings.max_queue_size} requests "
                f"waiting); retry after {wait} ms",
                retry_after_ms=wait,
            )
        self._queues.setdefault(request.key, deque()).append(request)
        self._queued[request.task] += 1
        self._wake.set()
        return request.future

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopped = True
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for queue in self._queues.values():
            for request in queue:
                if not request.future.done():
                    request.future.set_exception(Unavailable("the server is shutting down"))
        self._queues.clear()

    async def _run(self) -> None:
        while True:
            worker = await self.pool.acquire()
            taken = await self._take(worker)
            if taken is not None:
                self._dispatch(worker, *taken)

    async def _take(self, worker: Worker) -> tuple[BatchKey, list[Request]] | None:
        """Wait until some queue has a batch ready for ``worker``; take it. None: the worker
        has no room any more (it died, or a reload replaced it): acquire another."""
        while self.pool.current(worker) and worker.free > 0:
            self._drop_dead()
            waiting = [k for k, q in self._queues.items() if q]
            if not waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = min(waiting, key=lambda k: self._queues[k][0].enqueued)
            queue = self._queues[key]
            room = min(self.settings.max_batch_size, worker.free)
            enough, delay = self._readiness(worker, room)
            due = queue[0].enqueued + delay
            if len(queue) >= enough or time.monotonic() >= due:
                return key, self._select(key, room)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due - time.monotonic())
        return None

    def _readiness(self, worker: Worker, room: int) -> tuple[int, float]:
        """(requests that make a batch ready, longest the oldest may wait for them).

        An idle worker: its room, or ``max_queue_delay_ms``. A busy one: a quarter of the rows
        it is decoding, or ``join_delay_ms``. Every join re-concatenates the running batch and
        runs the encoder, so joining one request at a time costs throughput (measured at 32
        clients: 111 req/s joining at once, 147-171 with 5 ms of grouping, 178-185 with 20),
        while a quarter of the rows is reached quickly and a small batch joins at once.
        """
        s = self.settings
        if worker.load == 0:
            return room, s.max_queue_delay_ms / 1000
        return min(room, max(1, worker.load // 4)), s.join_delay_ms / 1000

    def _select(self, key: BatchKey, size: int) -> list[Request]:
        queue = self._queues[key]
        if len(queue) <= size:
            batch = list(queue)
            queue.clear()
        else:  # the oldest and its nearest neighbours in length
            oldest = queue[0]
            rest = sorted(list(queue)[1:], key=lambda r: abs(len(r.text) - len(oldest.text)))
            batch = [oldest, *rest[: size - 1]]
            chosen = set(map(id, batch))
            self._queues[key] = deque(r for r in queue if id(r) not in chosen)
        self._queued[key.task] -= len(batch)
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
            self._queued[key.task] -= len(queue) - len(kept)
            self._queues[key] = kept

    def _measure(self, task: str, device: str, outcome: Outcome) -> None:
        if self.metrics is not None:
            m = self.metrics
            m.queue_wait.labels(task).observe(outcome.queue_ms / 1000)
            m.compute.labels(device, task).observe(outcome.compute_ms / 1000)
            m.batch_size.labels(task).observe(outcome.batch_size)
            m.tokens.labels(task).inc(len(outcome.result.tokens) + 1)

    def _dispatch(self, worker: Worker, key: BatchKey, batch: list[Request]) -> None:
        """Send a batch to a worker; each row's future is settled when its answer arrives."""
        sent = time.monotonic()
        rows = [(r, r.text, r.on_partial is not None) for r in batch]
        try:
            ids = worker.submit(key, rows, self._partial, self._answered, _lost)
        except ServiceError as e:
            for request in batch:
                _lost(request, e)
            return
        for request, row_id in zip(batch, ids, strict=True):
            request._worker, request.row_id, request.sent = worker, row_id, sent
            if request.cancelled:  # its caller left between the queue and the worker
                worker.cancel_row(row_id)

    @staticmethod
    def _partial(request: Request, text: str) -> None:
        request.partials += 1
        if request.on_partial and not request.cancelled:
            request.on_partial(text)

    def _answered(self, request: Request, done: Done) -> None:
        """Settle the request's future with what the worker answered."""
        if request.future.done():
            return
        answer = done.answer
        if isinstance(answer, Cancelled):  # the caller left before its row was decoded
            request.future.cancel()
        elif isinstance(answer, Refused):  # the worker's own check of the input (its tokens)
            request.future.set_exception(InvalidArgument("text", answer.problem))
        elif isinstance(answer, Failed):
            log.error("decoding failed for one request: %s", answer.message)
            request.future.set_exception(RuntimeError(answer.message))
        else:
            worker = request._worker
            assert worker is not None
            queue_ms = 1000 * (request.sent - request.enqueued)
            info = worker.tasks[request.task]
            outcome = Outcome(answer, queue_ms, done.compute_ms, info, done.batch_size)
            self._measure(request.task, worker.device, outcome)
            request.future.set_result(outcome)


def _lost(request: Request, error: ServiceError) -> None:
    """The worker died holding the request (or could not take it): it may be retried."""
    if not request.future.done():
        request.future.set_exception(error)
