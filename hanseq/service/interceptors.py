"""Cross-cutting concerns of every hanseq RPC, so handlers carry no boilerplate:
a request id (from ``x-request-id`` metadata or new), the mapping of errors to statuses
(``ServiceError`` -> its code; anything else -> INTERNAL with the request id, traceback in the
log, never to the caller), and one structured log line per request outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace

from hanseq.service import tracing
from hanseq.service.auth import presented
from hanseq.service.errors import InvalidArgument, ServiceError
from hanseq.service.limits import CallerLimits, caller_of
from hanseq.service.logs import call_fields, request_id
from hanseq.service.metrics import Metrics
from hanseq.service.servicer import SERVICE, TASK_OF_METHOD

log = logging.getLogger("hanseq.requests")
SERVICE_PREFIX = f"/{SERVICE}/"  # our RPCs; health and reflection pass untouched

# What a handler's behaviour is: a servicer method. Its request is Any because each method takes
# its own message type (a Callable over Message would refuse them all: parameters are
# contravariant).
UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Message]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _incoming_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


class _CallRecord:
    def __init__(
        self,
        method: str,
        kind: str,
        task: str,
        context: grpc.aio.ServicerContext,
        metrics: Metrics | None,
        span: trace.Span,
    ):
        self.span = span
        self.method, self.code, self.started = method, grpc.StatusCode.OK, time.perf_counter()
        self.kind, self.task, self.metrics = kind, task, metrics
        self.counted = False  # the request's metrics are recorded once (see _count)
        if metrics is not None:
            metrics.grpc_started.labels(kind, SERVICE, method).inc()
        self.rid = _incoming_id(context)
        self.token = request_id.set(self.rid)
        self.fields: dict[str, Any] = {}  # what the handler notes (logs.note)
        self.fields_token = call_fields.set(self.fields)
        context.set_trailing_metadata((("x-request-id", self.rid),))

    def cancelled(self, context: grpc.aio.ServicerContext) -> None:
        """grpc-aio cancels the handler both when the caller leaves and at the deadline."""
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    async def fail(self, error: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Record the status and end the RPC with it (context.abort raises)."""
        if isinstance(error, ServiceError):
            self.code = error.code
            context.set_trailing_metadata((("x-request-id", self.rid), *error.trailers()))
            self._count()
            await context.abort(error.code, error.message)
        log.error("unhandled error in %s (request %s)", self.method, self.rid, exc_info=error)
        self.code = grpc.StatusCode.INTERNAL
        self._count()
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {self.rid})")

    def _count(self) -> None:
        """The request's metrics, once. A failure counts before ``context.abort``: grpc.aio
        sends the status from inside abort, so a caller that scraped right after its error
        could find the request not yet counted (a flaky test on a busy machine said so)."""
        if self.counted or self.metrics is None:
            return
        self.counted = True
        seconds = time.perf_counter() - self.started
        m, labels = self.metrics, (self.kind, SERVICE, self.method)
        m.grpc_handled.labels(*labels, self.code.name).inc()
        m.grpc_seconds.labels(*labels).observe(seconds)
        if self.task:
            m.requests.labels(self.task, self.code.name).inc()
            m.latency.labels(self.task).observe(seconds)

    def close(self) -> None:
        seconds = time.perf_counter() - self.started
        request_id.reset(self.token)
        call_fields.reset(self.fields_token)
        self._count()
        self._end_span()
        if not log.isEnabledFor(logging.INFO):
            return
        fields = {
            "request_id": self.rid,
            "method": self.method,
            "task": self.task,
            "code": self.code.name,
            "ms": round(1000 * seconds, 2),
            **self.fields,
        }
        log.info("%s %s", self.method, self.code.name, extra={"fields": fields})

    def _end_span(self) -> None:
        self.span.set_attributes(
            {
                "hanseq.request_id": self.rid,
                "hanseq.task": self.task,
                "rpc.grpc.status_code": self.code.value[0],
            }
        )
        if self.code != grpc.StatusCode.OK:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, self.code.name))
        self.span.end()


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: Metrics | None = None,
        served: Callable[[], Collection[str]] = tuple,
        limits: CallerLimits | None = None,
        tracer: trace.Tracer | None = None,
    ):
        self.metrics, self.served, self.limits = metrics, served, limits
        self.tracer = tracer or trace.NoOpTracer()
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}  # once each

    def admit(
        self, request: Message, context: grpc.aio.ServicerContext
    ) -> contextlib.AbstractContextManager:
        """The caller's limits around one request (a batch costs one per input)."""
        if self.limits is None or not self.limits.active:
            return contextlib.nullcontext()
        caller = caller_of(presented(context.invocation_metadata()), context.peer())
        return self.limits.admit(caller, max(1, len(getattr(request, "texts", ()))))

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        # Keyed by the handler, not the method: the auth interceptor inside may hand over a
        # refusing one for the same method.
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = self._wrapped[handler] = self._wrap(handler, details.method)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method, self),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, method, self),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler


class Undecodable:
    """A request body that is not the message it should be (bad protobuf, a string field
    that is not UTF-8). gRPC would answer a failing deserializer with UNKNOWN; it reaches the
    handler as this instead, to be answered INVALID_ARGUMENT like any other bad input."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(
    deserialize: Callable[[bytes], Message],
) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return deserialize(data)
        except Exception as e:  # DecodeError, or UnicodeDecodeError on some runtimes
            return Undecodable(e)

    return parse


@contextlib.asynccontextmanager
async def _handled(
    method: str,
    kind: str,
    request: Message | Undecodable,
    context: grpc.aio.ServicerContext,
    interceptor: ErrorInterceptor,
) -> AsyncIterator[None]:
    """Around one RPC: request id, error -> status, metrics, the log line."""
    task = TASK_OF_METHOD.get(method) or str(getattr(request, "task", ""))
    if task and task not in interceptor.served():
        task = "unknown"  # a caller's typo must not become a new time series
    span = interceptor.tracer.start_span(
        f"{SERVICE}/{method}",
        context=tracing.incoming(context.invocation_metadata()),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
    )
    # Current while the handler runs, so its cache, queue and decode spans are children.
    attached = otel_context.attach(trace.set_span_in_context(span))
    outcome = _CallRecord(method, kind, task, context, interceptor.metrics, span)
    try:
        if isinstance(request, Undecodable):
            raise InvalidArgument(
                "request", "is not a valid message (broken protobuf, or a string not UTF-8)"
            )
        with interceptor.admit(request, context):
            yield
    except asyncio.CancelledError:
        outcome.cancelled(context)
        raise
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        await outcome.fail(e, context)
    finally:
        outcome.close()
        otel_context.detach(attached)


def _unary(
    behaviour: UnaryBehaviour, method: str, interceptor: ErrorInterceptor
) -> Callable[[Message | Undecodable, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def wrapped(request: Message | Undecodable, context: grpc.aio.ServicerContext) -> Message:
        async with _handled(method, "UNARY", request, context, interceptor):
            return await behaviour(request, context)

    return wrapped


def _stream(
    behaviour: StreamBehaviour, method: str, interceptor: ErrorInterceptor
) -> Callable[[Message | Undecodable, grpc.aio.ServicerContext], AsyncIterator[Message]]:
    async def wrapped(
        request: Message | Undecodable, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        async with _handled(method, "SERVER_STREAM", request, context, interceptor):
            async for item in behaviour(request, context):
                yield item

    return wrapped
