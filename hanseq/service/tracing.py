"""Optional OpenTelemetry tracing, off by default (``otlp_endpoint`` turns it on).

One SERVER span per RPC (``hanseq.v1.Seq2Seq/Translate``; the request id, task and status as
attributes), a child of the caller's span when the call carries W3C ``traceparent``
metadata, with children for the cache lookup, the queue wait and the decode. Off, the tracer
is OpenTelemetry's no-op one: nothing is recorded and nothing leaves the process.

The tracer belongs to the App (not OpenTelemetry's global provider): several servers may live
in one process, as in the tests, each with its own exporter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hanseq.service.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """The App's tracer and, when tracing is on, the provider to flush at shutdown."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None):
        """``exporter``: where spans go instead of OTLP (a test's in-memory one); given, it
        turns tracing on whatever ``otlp_endpoint`` says."""
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        if exporter is None and not settings.otlp_endpoint:
            return
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "hanseq"}),
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
        if exporter is None:
            # Imported only when used: the exporter brings its own protobuf modules.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
            )
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("hanseq.service")

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # sends what the batch processor still holds


def incoming(metadata: Iterable[tuple[str, Any]] | None) -> Context:
    """The caller's trace context from the call's metadata (an empty one if it sent none)."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    return _PROPAGATOR.extract(carrier=carrier)
