"""service/health.py on a real grpc.aio server: Check and Watch as the health protocol says, and
Watch streams that end once the server drains, so that a drain need not wait out its grace."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hanseq.service.health import Health

R = health_pb2.HealthCheckResponse


@pytest.fixture
async def served():
    health = Health()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield health, server, health_pb2_grpc.HealthStub(channel)
    await channel.close()
    await server.stop(0)


async def test_check_knows_the_names_set_and_refuses_others(served):
    health, _, stub = served
    await health.set("hanseq.v1.Seq2Seq/translate", R.NOT_SERVING)
    assert (await stub.Check(health_pb2.HealthCheckRequest())).status == R.SERVING
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="hanseq.v1.Seq2Seq/translate"))
    assert reply.status == R.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()


async def test_watch_follows_changes_then_ends_with_the_last_status_on_close(served):
    health, _, stub = served
    call = stub.Watch(health_pb2.HealthCheckRequest(service="task"))
    assert (await call.read()).status == R.SERVICE_UNKNOWN  # not set yet: the protocol's rule
    await health.set("task", R.SERVING)
    assert (await call.read()).status == R.SERVING
    await health.set("task", R.SERVING)  # no change, nothing sent
    await health.set("task", R.NOT_SERVING)
    await health.close()
    assert (await call.read()).status == R.NOT_SERVING
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_drain_with_a_watcher_open_ends_when_the_calls_do(served):
    health, server, stub = served
    call = stub.Watch(health_pb2.HealthCheckRequest())
    assert (await call.read()).status == R.SERVING
    await health.set("", R.NOT_SERVING)
    await health.close()
    # Without close() the stream stays open and stop() waits out its grace (an hour here).
    await asyncio.wait_for(server.stop(3600), timeout=60)
    assert (await call.read()).status == R.NOT_SERVING
    assert await call.read() is grpc.aio.EOF
