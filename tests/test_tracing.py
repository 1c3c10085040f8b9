"""OpenTelemetry tracing against an in-process span exporter: a SERVER span per RPC under the
caller's trace, with the cache lookup, the queue wait and the decode as its children."""

from __future__ import annotations

import logging

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hanseq.service.server import create_app
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")
TRACE_ID, PARENT_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def traced(service_bundle_path):
    exporter = InMemorySpanExporter()
    app = await create_app(settings_for(service_bundle_path), span_exporter=exporter)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield hanseq_pb2_grpc.Seq2SeqStub(channel), exporter
    await channel.close()
    await app.stop()


async def test_a_call_is_a_server_span_in_the_callers_trace_with_its_steps(traced):
    stub, exporter = traced
    exporter.clear()
    metadata = (("traceparent", TRACEPARENT), ("x-request-id", "trace-me"))
    options = pb.DecodingOptions(no_cache=False)
    await stub.Translate(
        pb.TranslateRequest(text="사과 바다 하늘", options=options), metadata=metadata
    )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) >= {"hanseq.v1.Seq2Seq/Translate"}, spans
    server = spans["hanseq.v1.Seq2Seq/Translate"]
    assert server.kind == trace.SpanKind.SERVER
    assert server.context.trace_id == TRACE_ID and server.parent.span_id == PARENT_ID
    assert server.attributes["hanseq.request_id"] == "trace-me"
    assert server.attributes["hanseq.task"] == "translate"
    assert server.attributes["rpc.grpc.status_code"] == 0
    for step in ("cache.lookup", "queue", "decode"):
        assert spans[step].parent.span_id == server.context.span_id, step
        assert server.start_time <= spans[step].start_time <= spans[step].end_time
        assert spans[step].end_time <= server.end_time
    assert spans["cache.lookup"].attributes["hanseq.cache.hit"] is False
    assert spans["queue"].end_time <= spans["decode"].start_time
    assert spans["decode"].attributes["hanseq.batch_size"] >= 1


async def test_a_refused_call_is_an_error_span_and_a_new_trace_without_context(traced):
    stub, exporter = traced
    exporter.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Translate(pb.TranslateRequest(text=""))
    (server,) = exporter.get_finished_spans()
    assert server.parent is None and server.context.trace_id != TRACE_ID
    assert server.status.status_code == trace.StatusCode.ERROR
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_streams_and_batches_trace_too(traced, caplog):
    stub, exporter = traced
    exporter.clear()
    with caplog.at_level(logging.ERROR):
        request = pb.GenerateRequest(task="respond", text="사과 바다")
        async for _ in stub.GenerateStream(request, metadata=(("traceparent", TRACEPARENT),)):
            pass
        batch = pb.GenerateBatchRequest(task="summarize", texts=["사과", "바다 하늘"])
        await stub.GenerateBatch(batch)
    assert "detach" not in caplog.text  # the span's context left as it came, in the stream too
    names = [s.name for s in exporter.get_finished_spans()]
    assert (
        "hanseq.v1.Seq2Seq/GenerateStream" in names and "hanseq.v1.Seq2Seq/GenerateBatch" in names
    )
    batch_span = next(s for s in exporter.get_finished_spans() if s.name.endswith("GenerateBatch"))
    decodes = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "decode" and s.parent.span_id == batch_span.context.span_id
    ]
    assert len(decodes) == 2  # one per item, under the batch's span


async def test_tracing_is_off_by_default(service_bundle_path):
    app = await create_app(settings_for(service_bundle_path))
    try:
        assert isinstance(app.tracing.tracer, trace.NoOpTracer) and app.tracing.provider is None
    finally:
        await app.stop()
