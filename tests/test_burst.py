"""A burst far beyond every limit, against `hanseq serve` as a process: every call is answered,
served or RESOURCE_EXHAUSTED with the retry pushback, and every one reaches hanseq (counted in
its metrics). Before the fix, gRPC core cancelled part of such a burst unseen (CANCELLED, which
no client retries): its pending-call backlog starts dropping at 1,000 calls."""

from __future__ import annotations

import asyncio
import collections
import re
import urllib.request

import grpc
import pytest

from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import HanseqServer, free_port


@pytest.fixture(scope="module")
def burst_server(service_bundle_path):
    server = HanseqServer(service_bundle_path, metrics_port=str(free_port()))
    server.start()
    yield server
    server.stop()


async def _burst(target: str, calls: int, connections: int) -> collections.Counter:
    """``calls`` concurrent Translate calls spread over ``connections`` channels, no deadline
    (a deadline would turn slowness into DEADLINE_EXCEEDED); counts each status code, and
    'no pushback' for a refusal without the retry hint."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(connections)]
    stubs = [hanseq_pb2_grpc.Seq2SeqStub(c) for c in channels]
    codes: collections.Counter = collections.Counter()
    fresh = pb.DecodingOptions(no_cache=True)

    async def one(i: int) -> None:
        request = pb.TranslateRequest(text=f"사과 {i} 바다", options=fresh)
        try:
            await stubs[i % connections].Translate(request)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as e:
            codes[e.code().name] += 1
            trailers = dict(e.trailing_metadata() or ())
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (
                "grpc-retry-pushback-ms" not in trailers
            ):
                codes["no pushback"] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        for channel in channels:
            await channel.close()
    return codes


def _requests_counted(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(
        int(float(v)) for v in re.findall(r"^hanseq_requests_total\{[^}]*\} (\S+)$", text, re.M)
    )


@pytest.mark.parametrize("calls, connections", [(4000, 1), (6000, 4)])
async def test_a_burst_beyond_every_limit_is_answered_not_cancelled(
    burst_server, calls, connections
):
    metrics_port = int(burst_server.settings["metrics_port"])
    before = _requests_counted(metrics_port)
    codes = await _burst(burst_server.target, calls, connections)
    assert sum(n for c, n in codes.items() if c != "no pushback") == calls
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes  # no CANCELLED, no UNAVAILABLE
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes  # beyond the limits
    assert _requests_counted(metrics_port) - before == calls  # each one reached hanseq
