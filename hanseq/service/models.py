"""The model versions the server serves: for each, its own workers (pool.py) and its own queues
(batcher.py), so loading, unloading or reloading one never touches another's workers or the
requests they hold; and the routes (routing.py) each request takes to one of them.

What is served comes from the repository (repository.py): at start-up and on a full reload
(SIGHUP, ReloadModels) every bundle as its policy says; ``load`` and ``unload`` change one
bundle (or one version of it) until the next full reload. One change runs at a time. A change
is all or nothing: the versions it starts must all become ready and the routes must stay
unambiguous, else the ones it started stop and the previous state keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hanseq.engine.config import ConfigurationError
from hanseq.service.batcher import Batcher
from hanseq.service.errors import FailedPrecondition, NotFound
from hanseq.service.metrics import Metrics
from hanseq.service.pool import WorkerPool
from hanseq.service.protocol import TaskInfo
from hanseq.service.repository import Model, ModelKey, Repository, RepositoryError, scan
from hanseq.service.routing import Routes, build
from hanseq.service.settings import Settings
from hanseq.service.workers import Worker

log = logging.getLogger(__name__)


@dataclass
class Served:
    """One model version being served: its workers and the queues in front of them."""

    pool: WorkerPool
    batcher: Batcher

    @property
    def model(self) -> Model:
        return self.pool.model  # the pool's, which a reload updates

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        return self.pool.tasks

    def idle(self) -> bool:
        return self.batcher.queued_total() == 0 and self.pool.busy_count() == 0

    async def stop_when_idle(self) -> None:
        """Answer every request it holds or that waits for it, then stop its workers."""
        while not self.idle():
            await asyncio.sleep(0.05)
        await self.batcher.stop()
        await self.pool.stop()


class Models:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings, self.metrics = settings, metrics
        self.served: dict[ModelKey, Served] = {}
        self.routes = Routes({}, {}, {})
        self.repository = Repository({}, {})
        self.on_change: Callable[[], object] = lambda: None  # health follows
        self.on_restart: Callable[[str], object] = lambda device: None
        self._changing = asyncio.Lock()
        self._draining: dict[asyncio.Task, Served] = {}  # unloaded, finishing their rows

    # ---- what a request and the metrics read ----------------------------------------------
    @property
    def tasks(self) -> dict[str, TaskInfo]:
        """task -> the TaskInfo of the version answering requests that name no model."""
        out = {}
        for task in self.routes.defaults:
            key = self.routes.default_key(task)
            if key in self.served:
                out[task] = self.served[key].tasks[task]
        return out

    def resolve(self, task: str, name: str = "", version: str = "") -> Served:
        key = self.routes.resolve(task, name, version)
        if self.metrics is not None:
            self.metrics.model_requests.labels(key.name, key.version, task).inc()
        return self.served[key]

    def workers(self) -> list[Worker]:
        return [w for s in self.served.values() for w in s.pool.workers]

    def alive_count(self) -> int:
        return sum(s.pool.alive_count() for s in self.served.values())

    def busy_count(self) -> int:
        return sum(s.pool.busy_count() for s in self.served.values())

    def queued(self, task: str) -> int:
        return sum(s.batcher.queued(task) for s in self.served.values())

    def shares(self) -> dict[ModelKey, float]:
        """Each served version's share (0-1) of the requests that name no version."""
        out = dict.fromkeys(self.served, 0.0)
        for name, split in self.routes.split.items():
            total = sum(weight for _, weight in split)
            for version, weight in split:
                out[ModelKey(name, version)] = weight / total
        return out

    # ---- changes ---------------------------------------------------------------------------
    async def start(self) -> None:
        """What the models directory says; a directory that cannot be served as it stands is
        a ConfigurationError naming the setting (the command exits 2, as for a bad flag)."""
        where = f"models (HANSEQ_MODELS) {self.settings.models_path()}"
        try:
            self.repository = scan(self.settings.models_path())
            await self._apply(self.repository.models, reload=())
        except RepositoryError as e:
            raise ConfigurationError(f"{where}: {e}") from None
        except FailedPrecondition as e:  # routes that would be ambiguous
            raise ConfigurationError(f"{where}: {e.message}") from None

    async def reload(self) -> None:
        """Everything again, as the repository and its policies now say."""
        async with self._changing:
            repository = scan(self.settings.models_path())
            wanted = repository.models
            await self._apply(
                wanted, reload=[k for k in wanted if k in self.served], repo=repository
            )

    async def load(self, name: str, version: str = "") -> list[ModelKey]:
        """Start (or reload) bundle ``name``: the one version named, or the versions its
        policy serves (those it no longer serves stop). The others are not touched."""
        async with self._changing:
            repository = scan(self.settings.models_path())
            found = self._on_disk(repository, name, version)
            wanted = {k: m for k, m in self._models().items() if k.name != name or version}
            wanted.update(found)
            await self._apply(
                wanted, reload=[k for k in found if k in self.served], repo=repository
            )
            return sorted(found)

    async def unload(self, name: str, version: str = "") -> list[ModelKey]:
        """Stop serving bundle ``name`` (or one version of it) once what it holds is answered."""
        async with self._changing:
            gone = [k for k in self.served if k.name == name and version in ("", k.version)]
            if not gone:
                what = f"{name}/{version}" if version else name
                raise NotFound("model", f"{what} is not served; served: {self._listing()}")
            wanted = {k: m for k, m in self._models().items() if k not in gone}
            if not wanted:
                raise FailedPrecondition(f"{name} is all this server serves; load another first")
            await self._apply(wanted, reload=())
            return gone

    def _models(self) -> dict[ModelKey, Model]:
        return {k: s.model for k, s in self.served.items()}

    def _listing(self) -> str:
        return ", ".join(str(k) for k in sorted(self.served)) or "nothing"

    @staticmethod
    def _on_disk(repository: Repository, name: str, version: str) -> dict[ModelKey, Model]:
        """The versions of ``name`` to load: the one named (if on disk), else the policy's."""
        if version:
            path = repository.root / name / version
            model = repository.load_one(name, version)
            if model is None:
                raise NotFound("model.version", f"no bundle {name}/{version} at {path}")
            return {model.key: model}
        found = {k: m for k, m in repository.models.items() if k.name == name}
        if not found:
            names = sorted({k.name for k in repository.models})
            raise NotFound("model.name", f"no bundle {name!r} in the repository; it holds {names}")
        return found

    async def _apply(
        self,
        wanted: dict[ModelKey, Model],
        reload: Iterable[ModelKey],
        repo: Repository | None = None,
    ) -> None:
        """Serve exactly ``wanted``: start what is new, reload ``reload``, then switch the
        routes and let what is no longer wanted finish its requests and stop."""
        policies = {**self.repository.policies, **(repo.policies if repo else {})}
        try:
            routes = build({k: m.tasks for k, m in wanted.items()}, policies)
        except RepositoryError as e:
            raise FailedPrecondition(str(e)) from None
        fresh = {k: self._new(m) for k, m in wanted.items() if k not in self.served}
        results = await asyncio.gather(
            *(s.pool.start() for s in fresh.values()),
            *(self.served[k].pool.reload(wanted[k]) for k in reload),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(s.pool.stop() for s in fresh.values()))
            raise errors[0]
        for served in fresh.values():
            served.batcher.start()
            for worker in served.pool.workers:  # at 0 from the start (increase() needs it)
                self._restarts_from_zero(worker.device)
        gone = [self.served[k] for k in self.served if k not in wanted]
        self.served = {k: self.served.get(k) or fresh[k] for k in wanted}
        self.routes = routes
        if repo is not None:
            self.repository = repo
        for served in gone:
            task = asyncio.create_task(served.stop_when_idle())
            self._draining[task] = served
            task.add_done_callback(lambda done: self._draining.pop(done, None))
        log.info("serving %s", self._listing())
        self.on_change()

    def _restarts_from_zero(self, device: str) -> None:
        if self.metrics is not None:
            self.metrics.worker_restarts.labels(device)

    def _new(self, model: Model) -> Served:
        pool = WorkerPool(self.settings, model, lambda: self.on_change())
        pool.on_restart = lambda device: self.on_restart(device)
        return Served(pool, Batcher(pool, self.settings, self.metrics))

    async def stop(self) -> None:
        """Every version's queues and workers, those still draining after an unload too."""
        for task in list(self._draining):
            task.cancel()
        every = [*self.served.values(), *self._draining.values()]
        for served in every:
            await served.batcher.stop()
        await asyncio.gather(*(s.pool.stop() for s in every))
