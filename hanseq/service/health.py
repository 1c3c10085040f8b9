"""gRPC's health protocol (grpc.health.v1.Health: Check and Watch), with Watch streams that end
when the server drains.

grpc_health's own servicer keeps a Watch stream open until the server cancels it, and a drain
(``server.stop(grace)``) waits for every open call: one client watching health, as gRPC's
client-side health checking does on every channel, made each SIGTERM last the whole grace
period after the last request had been answered. Here, once ``close()`` is called, each Watch
stream sends the status it has not yet sent (the drain's NOT_SERVING) and ends with OK; the
client's channel then reconnects and finds the server gone. So a drain lasts as long as the
requests it finishes. Which statuses to set is the lifecycle's business (service/lifecycle.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:  # an enum wrapper at run time, a class to the type checker
    Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, Status] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: Status) -> None:
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def close(self) -> None:
        """Watch streams send their last status and end; Check answers as before."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    def _news(self, service: str, sent: Status | None) -> bool:
        return self._status.get(service, UNKNOWN) != sent or self._closing

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # type: ignore[override]  # an async generator, as grpc.aio serves streams
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status at once, then each change; an unknown name is SERVICE_UNKNOWN
        (the protocol's rule for Watch) until it is set."""
        sent: Status | None = None
        while True:
            async with self._changed:
                await self._changed.wait_for(partial(self._news, request.service, sent))
                status, closing = self._status.get(request.service, UNKNOWN), self._closing
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            if closing:
                return
