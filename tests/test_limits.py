"""Per-caller limits: the token bucket and the in-flight cap, alone and on a real server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from hanseq.service.errors import Overloaded as ServerOverloaded
from hanseq.service.limits import CallerLimits, caller_of
from hanseq.service.server import create_app
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from hanseq_client import NO_RETRY, AsyncClient, Overloaded, Retry
from tests.conftest import settings_for

TOKEN_A, TOKEN_B = "caller-a-0123456789abcdef", "caller-b-0123456789abcdef"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_the_rate_and_says_when():
    clock = Clock()
    limits = CallerLimits(rate_per_s=2, burst=3, concurrency=0, retry_after_ms=500, clock=clock)
    for _ in range(3):
        with limits.admit("a"):
            pass
    with pytest.raises(ServerOverloaded, match="over its rate") as caught, limits.admit("a"):
        pass
    assert caught.value.retry_after_ms == 500  # one input at 2/s
    with limits.admit("b"):  # another caller has its own bucket
        pass
    clock.now += 0.5
    with limits.admit("a"):
        pass
    clock.now += 0.5
    with pytest.raises(ServerOverloaded) as caught, limits.admit("a", cost=3):
        pass
    assert caught.value.retry_after_ms == 1000  # needs 3, has 1, at 2/s
    clock.now += 10
    with limits.admit("a", cost=50):  # a batch larger than the burst takes the whole burst
        pass


def test_in_flight_cap_and_release_on_error():
    limits = CallerLimits(rate_per_s=0, burst=0, concurrency=2, retry_after_ms=300)
    with (
        limits.admit("a"),
        limits.admit("a"),
        pytest.raises(ServerOverloaded, match="2 requests in flight") as caught,
        limits.admit("a"),
    ):
        pass
    assert caught.value.retry_after_ms == 300
    with pytest.raises(RuntimeError), limits.admit("a"), limits.admit("a"):
        raise RuntimeError("the request failed")
    with limits.admit("a"), limits.admit("a"):  # both were released
        pass


def test_callers_are_tokens_or_addresses():
    assert caller_of(b"secret-token", "ipv4:10.0.0.7:5555").startswith("token:")
    assert "secret" not in caller_of(b"secret-token", "")
    assert caller_of(None, "ipv4:10.0.0.7:5555") == "peer:ipv4:10.0.0.7"
    assert caller_of(None, "ipv6:[::1]:5555") == "peer:ipv6:[::1]"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_greedy_caller_is_slowed_and_others_are_not(service_bundle_path):
    settings = settings_for(
        service_bundle_path, caller_rate_per_s=4, caller_burst=4, auth_tokens=f"{TOKEN_A},{TOKEN_B}"
    )
    app = await create_app(settings)
    target = f"127.0.0.1:{app.port}"
    try:
        async with AsyncClient(target, token=TOKEN_A, retry=NO_RETRY) as greedy:
            results = await asyncio.gather(
                *(greedy.translate(f"사과 바다 {i}") for i in range(8)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, Overloaded)]
            assert len(refused) == 4 and "caller_rate_per_s" in refused[0].message
            assert 0 < refused[0].retry_after <= 1.0
        async with AsyncClient(target, token=TOKEN_B, retry=NO_RETRY) as polite:
            assert (await polite.translate("사과 바다")).text  # B's bucket is full
        # With retries on (the default), the client waits as long as the server asks: the
        # bucket is empty, so three more inputs take 0.75 s at 4/s, not the 10 ms backoff.
        started = time.monotonic()
        async with AsyncClient(target, token=TOKEN_A, retry=Retry(initial_backoff=0.01)) as a:
            results = await asyncio.gather(*(a.translate(f"하늘 {i}") for i in range(3)))
        assert all(r.text for r in results) and time.monotonic() - started >= 0.5
        async with grpc.aio.insecure_channel(target) as channel:  # a batch costs its inputs
            stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
            await asyncio.sleep(1.1)
            metadata = (("authorization", f"Bearer {TOKEN_B}"),)
            big = pb.GenerateBatchRequest(task="translate", texts=["사과"] * 4)
            await stub.GenerateBatch(big, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Translate(pb.TranslateRequest(text="사과"), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(caught.value.trailing_metadata())
            assert 0 < int(trailers["grpc-retry-pushback-ms"]) <= 250
    finally:
        await app.stop()
