"""The server's one lifecycle: starting -> serving -> draining -> stopped, and what health says.

The server moves it (create_app, App.stop); the servicer reads it (RPCs answer UNAVAILABLE
unless it is serving); health follows it: ``""``, the service and every task are SERVING only
while it serves and a live worker holds the task's bundle, NOT_SERVING otherwise (and for a
task a reload took away). A reload keeps serving throughout (service/pool.py).

``hanseq.liveness`` is the one name that does not follow it: SERVING from start-up until the
process stops, whatever the models do, so a liveness probe asks only whether the process still
answers (its event loop alive) and never kills a pod for loading, draining or reloading.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from grpc_health.v1 import health_pb2

from hanseq.service.health import Health
from hanseq.service.models import Models
from hanseq.service.servicer import SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "hanseq.liveness"


class Stage(enum.Enum):
    STARTING = "starting"  # listening, answering health; the models are loading
    SERVING = "serving"
    DRAINING = "draining"  # refusing new calls, finishing the ones in flight
    STOPPED = "stopped"


def health_names(tasks: Iterable[str]) -> list[str]:
    """ "" (the whole server), the service, and one name per task: hanseq.v1.Seq2Seq/translate."""
    return ["", SERVICE, *(f"{SERVICE}/{t}" for t in tasks)]


class Lifecycle:
    def __init__(self, health: Health, models: Models):
        self.health, self.models = health, models
        self.stage = Stage.STARTING
        self._known: set[str] = set()

    @property
    def serving(self) -> bool:
        return self.stage is Stage.SERVING

    @property
    def accepting(self) -> bool:
        """RPCs are decoded: serving, or draining (the transport refuses new calls then, and
        the ones in flight finish)."""
        return self.stage in (Stage.SERVING, Stage.DRAINING)

    async def starting(self) -> None:
        for name in health_names([]):
            await self.health.set(name, NOT_SERVING)
        await self.health.set(LIVENESS, SERVING)

    async def serve(self) -> None:
        self.stage = Stage.SERVING
        await self.update_health()

    async def drain(self) -> None:
        self.stage = Stage.DRAINING
        await self.update_health()
        await self.health.close()  # Watch streams end: the drain waits only for requests

    async def stopped(self) -> None:
        self.stage = Stage.STOPPED
        await self.health.set(LIVENESS, NOT_SERVING)

    async def reload(self) -> None:
        """Load the bundles again and switch (one change at a time); health follows."""
        await self.models.reload()
        await self.update_health()

    async def update_health(self) -> None:
        """SERVING where a live worker serves; NOT_SERVING while starting, broken or draining."""
        up = self.serving and self.models.alive_count() > 0
        names = health_names(self.models.tasks)
        for name in self._known - set(names):
            await self.health.set(name, NOT_SERVING)  # a task a reload took away
        self._known |= set(names)
        for name in names:
            await self.health.set(name, SERVING if up else NOT_SERVING)
