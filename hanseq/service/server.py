"""The gRPC server: built by ``create_app`` (tests use it on port 0), run by ``serve``.

Start-up: listen at once (health says NOT_SERVING, RPCs answer UNAVAILABLE), load and warm the
bundles in the workers, then SERVING. SIGTERM/SIGINT: NOT_SERVING, refuse new RPCs, let
in-flight ones finish within ``grace_period_s``, exit 0. SIGHUP: reload the bundles without
downtime (also the ReloadModels RPC).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Tracer

from hanseq.engine.config import ConfigurationError
from hanseq.service.auth import AuthInterceptor, load_tokens, server_credentials
from hanseq.service.cache import LocalCache, RedisCache, ResponseCache
from hanseq.service.health import Health
from hanseq.service.interceptors import ErrorInterceptor
from hanseq.service.lifecycle import Lifecycle
from hanseq.service.limits import CallerLimits
from hanseq.service.metrics import Metrics
from hanseq.service.models import Models
from hanseq.service.servicer import SERVICE, Seq2SeqServicer
from hanseq.service.settings import Settings
from hanseq.service.tracing import Tracing
from hanseq.v1 import hanseq_pb2_grpc

log = logging.getLogger("hanseq.server")


@dataclass
class App:
    settings: Settings
    server: grpc.aio.Server
    port: int
    models: Models
    servicer: Seq2SeqServicer
    lifecycle: Lifecycle
    metrics: Metrics
    cache: ResponseCache
    tracing: Tracing

    async def reload(self) -> None:
        await self.lifecycle.reload()

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new calls, finish in-flight ones within the grace period."""
        await self.lifecycle.drain()
        await self.server.stop(self.settings.grace_period_s)
        await self.lifecycle.stopped()
        await self.models.stop()
        await self.cache.close()
        self.metrics.stop()
        self.tracing.shutdown()

    def state(self) -> dict[str, Any]:
        """What the metrics read at each scrape."""
        return {
            "queued": {t: self.models.queued(t) for t in self.models.tasks},
            "queue_limit": self.settings.max_queue_size,
            "alive": self.models.alive_count(),
            "busy": self.models.busy_count(),
            "tasks": self.models.tasks,
            "shares": {(k.name, k.version): r for k, r in self.models.shares().items()},
            "workers": [
                {"worker": str(i), "device": w.device, "pid": w.pid}
                for i, w in enumerate(self.models.workers())
                if w.pid is not None
            ],
        }


async def create_app(settings: Settings, span_exporter: SpanExporter | None = None) -> App:
    """Listening and answering health checks at once; SERVING when the models are warm.
    ``span_exporter``: trace into it (a test's in-memory exporter) instead of OTLP."""
    metrics = Metrics()
    tracing = Tracing(settings, span_exporter)
    models = Models(settings, metrics)
    models.on_restart = lambda device: metrics.worker_restarts.labels(device).inc()
    server = grpc.aio.server(
        interceptors=_interceptors(settings, metrics, models, tracing.tracer),
        options=_channel_options(settings),
    )
    health = Health()
    lifecycle = Lifecycle(health, models)
    cache = build_cache(settings, metrics)
    servicer = Seq2SeqServicer(
        settings,
        models,
        cache,
        lifecycle,
        lifecycle.reload,
        count_item=lambda task, code: metrics.batch_items.labels(task, code).inc(),
        tracer=tracing.tracer,
    )
    hanseq_pb2_grpc.add_Seq2SeqServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [
                SERVICE,
                reflection.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ],
            server,
        )
    port = _listen(server, settings)
    app = App(settings, server, port, models, servicer, lifecycle, metrics, cache, tracing)
    metrics.watch(app.state)
    if settings.metrics_port >= 0:
        try:
            metrics.start(settings.host, settings.metrics_port)
        except OSError as e:
            raise ConfigurationError(
                f"metrics_port (HANSEQ_METRICS_PORT) {settings.metrics_port}: {e.strerror}; "
                "choose another, 0 for any free port, or -1 for no metrics"
            ) from None
    await lifecycle.starting()
    await server.start()
    models.on_change = lambda: asyncio.ensure_future(lifecycle.update_health())
    try:
        await models.start()
    except BaseException:
        await server.stop(0)
        raise
    await lifecycle.serve()
    return app


def _interceptors(s: Settings, metrics: Metrics, models: Models, tracer: Tracer) -> list:
    """Errors and limits outermost (so a refusal is a counted status), then tokens."""
    limits = CallerLimits(
        s.caller_rate_per_s, s.caller_burst, s.caller_concurrency, s.retry_after_ms
    )
    interceptors: list = [
        ErrorInterceptor(
            metrics, served=lambda: models.routes.defaults, limits=limits, tracer=tracer
        )
    ]
    interceptors.append(AuthInterceptor(load_tokens(s), s.admin_without_auth))
    return interceptors


def _listen(server: grpc.aio.Server, s: Settings) -> int:
    """Bind the port, or say plainly that it is taken (the channel options turn gRPC's port
    sharing off: two servers on one port would answer calls in turn, with different models)."""
    address = f"{s.host}:{s.port}"
    credentials = server_credentials(s)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if not port:
        raise ConfigurationError(
            f"port (HANSEQ_PORT) {s.port}: cannot listen on {address}; is another server "
            "using it? Choose another, or 0 for any free port"
        )
    return port


def build_cache(settings: Settings, metrics: Metrics) -> ResponseCache:
    """The in-process layer always; Redis in front of it when ``redis_url`` is set."""
    shared = None
    if settings.redis_url:
        shared = RedisCache(
            settings.redis_url,
            settings.cache_prefix,
            settings.cache_ttl_s,
            settings.redis_timeout_ms / 1000,
            settings.cache_breaker_s,
            on_error=metrics.cache_errors.inc,
            password=settings.redis_password,
        )
    return ResponseCache(
        LocalCache(settings.cache_entries, settings.cache_bytes),
        shared,
        on_lookup=lambda layer, result: metrics.cache_lookups.labels(layer, result).inc(),
    )


def _channel_options(s: Settings) -> list[tuple[str, int]]:
    aged = []
    if s.max_connection_age_s > 0:  # clients of a scaled-up Deployment find the new pods
        aged = [
            ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(s.grace_period_s * 1000)),
        ]
    return aged + [
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared (see _listen)
        # The Python server takes calls from gRPC core one at a time; in a burst the rest wait
        # in core, which past 1,000 of them cancels calls at random (RED up to 3,000) before
        # hanseq sees them: CANCELLED, which clients do not retry. Held here instead, every
        # call reaches the limits and is answered (served, or RESOURCE_EXHAUSTED + pushback).
        ("grpc.server.max_pending_requests", s.max_pending_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", s.max_pending_rpcs),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


async def serve(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    app = await create_app(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(app)))
    tasks = ", ".join(
        f"{t} ({i.model_name} {i.model_version})" for t, i in app.models.tasks.items()
    )
    log.info("serving %s on %s:%d", tasks, settings.host, app.port)
    if app.metrics.port:
        log.info("metrics on http://%s:%d/metrics", settings.host, app.metrics.port)
    await stop.wait()
    log.info("draining (grace %.0f s)", settings.grace_period_s)
    await app.stop()
    log.info("stopped")
    return 0


async def _reload(app: App) -> None:
    try:
        await app.reload()
    except Exception as e:  # the old models keep serving
        log.error("reload failed, still serving the previous models: %s", e)
