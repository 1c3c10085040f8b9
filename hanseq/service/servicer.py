"""RPC handlers: validate -> batcher -> response. Thin on purpose: errors become statuses in the
interceptor, batching and decoding live in batcher/workers."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from hanseq.engine.dialogue import Turn, source_text
from hanseq.engine.options import SearchOptions
from hanseq.service.batcher import Outcome, Request
from hanseq.service.cache import ResponseCache, cache_key, cacheable
from hanseq.service.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Overloaded,
    ServiceError,
    Unavailable,
)
from hanseq.service.logs import note, request_id
from hanseq.service.models import Models, Served
from hanseq.service.protocol import TaskInfo
from hanseq.service.repository import ModelKey, RepositoryError
from hanseq.service.settings import Settings
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc

log = logging.getLogger("hanseq.servicer")

SAMPLING_ONLY = ("temperature", "top_k", "top_p", "seed")
_DONE = object()
T = TypeVar("T")


SERVICE = pb.DESCRIPTOR.services_by_name["Seq2Seq"].full_name  # "hanseq.v1.Seq2Seq"
# The RPCs whose task is their name; Generate* name theirs in the request.
TASK_OF_METHOD = {"Translate": "translate", "Respond": "respond", "Summarize": "summarize"}


class Stage(Protocol):
    """What the servicer reads of the server's lifecycle (service/lifecycle.py)."""

    @property
    def accepting(self) -> bool: ...


class Seq2SeqServicer(hanseq_pb2_grpc.Seq2SeqServicer):
    def __init__(
        self,
        settings: Settings,
        models: Models,
        cache: ResponseCache,
        lifecycle: Stage,
        reload: Callable[[], Awaitable[None]],
        count_item: Callable[[str, str], None] = lambda task, code: None,
        tracer: trace.Tracer | None = None,
    ):
        self.settings, self.models, self.cache = settings, models, cache
        self.lifecycle, self.reload = lifecycle, reload
        self.count_item = count_item  # (task, code) of each GenerateBatch item answered
        self.tracer = tracer or trace.NoOpTracer()  # children of the RPC's span (tracing.py)

    # ---- the RPCs -------------------------------------------------------------------------
    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        return await self._unary("translate", request.text, "text", request, context)

    async def Summarize(
        self, request: pb.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        return await self._unary("summarize", request.text, "text", request, context)

    async def Respond(
        self, request: pb.RespondRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        served = self._route("respond", request.model)
        text = self._dialogue_source(request, served.tasks["respond"])
        return await self._unary("respond", text, "message", request, context, served)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        self._task(request.task, "task")
        return await self._unary(request.task, request.text, "text", request, context)

    async def GenerateBatch(
        self, request: pb.GenerateBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateBatchResponse:
        task = self._task(request.task, "task")  # not serving: the call fails, not its items
        served = self._route(task, request.model)
        texts = list(request.texts)
        if not texts:
            raise InvalidArgument("texts", "must hold at least one text")
        if len(texts) > self.settings.max_batch_items:
            raise InvalidArgument(
                "texts",
                f"{len(texts)} items; the limit is {self.settings.max_batch_items} per call",
            )
        options = self._options(request.options, served.tasks[task])
        no_cache = request.options.no_cache
        answers = [
            self._item(served, task, t, f"texts[{i}]", options, no_cache, context)
            for i, t in enumerate(texts)
        ]
        items = await self._within(_all(answers), context)
        failed = 0
        for item in items:
            self.count_item(task, item.error.code_name if item.HasField("error") else "OK")
            failed += item.HasField("error")
        note(items=len(items), failed_items=failed)
        if all(item.HasField("result") for item in items):
            return pb.GenerateBatchResponse(results=[i.result for i in items], items=items)
        return pb.GenerateBatchResponse(items=items)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        task = self._task(request.task, "task")
        served = self._route(task, request.model)
        self._check_text(request.text, "text")
        options = self._options(request.options, served.tasks[task])
        if options.beam_size != 1:
            raise InvalidArgument(
                "options.beam_size",
                "streaming decodes greedily or by sampling; beam_size must be 1",
            )
        partials: asyncio.Queue[Any] = asyncio.Queue()
        req = self._submit(
            served, task, request.text, options, context, on_partial=partials.put_nowait
        )
        req.future.add_done_callback(lambda _: partials.put_nowait(_DONE))
        sent = ""
        try:
            while (item := await self._within(partials.get(), context)) is not _DONE:
                yield pb.GenerateStreamResponse(text=item, delta=_added(sent, item))
                sent = item
            outcome = req.future.result()
        finally:
            if not req.future.done():
                req.cancel()  # the caller left or its deadline passed: stop decoding it
        text, response = outcome.result.text, _response(outcome)
        _note(response)
        yield pb.GenerateStreamResponse(
            text=text, final=True, result=response, delta=_added(sent, text)
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        self._not_ready()  # an empty list while loading would read as "serves nothing"
        return pb.ListModelsResponse(
            tasks=self._task_infos(), limits=self._limits(), models=self._model_infos()
        )

    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadModelsResponse:
        await _changing("reload", self.reload())
        return pb.ReloadModelsResponse(tasks=self._task_infos(), models=self._model_infos())

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        self._bundle_named(request.name, "a bundle in the models directory")
        loaded = await _changing("load", self.models.load(request.name, request.version))
        return pb.LoadModelResponse(loaded=self._model_infos(loaded), models=self._model_infos())

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        self._bundle_named(request.name, "a served bundle")
        await _changing("unload", self.models.unload(request.name, request.version))
        return pb.UnloadModelResponse(models=self._model_infos())

    # ---- helpers ----------------------------------------------------------------------------
    async def _unary(
        self,
        task: str,
        text: str,
        field: str,
        request: Any,  # a task's request message: its options and model
        context: grpc.aio.ServicerContext,
        served: Served | None = None,
    ) -> pb.GenerateResponse:
        served = served or self._route(task, request.model)
        self._check_text(text, field)
        options = self._options(request.options, served.tasks[task])
        no_cache = request.options.no_cache
        answer = self._answer(served, task, text, options, no_cache, context)
        response = await self._within(_as_field(answer, field), context)
        _note(response)
        return response

    async def _item(
        self,
        served: Served,
        task: str,
        text: str,
        field: str,
        options: SearchOptions,
        no_cache: bool,
        context: grpc.aio.ServicerContext,
    ) -> pb.BatchItem:
        """One input of a batch: its result, or its own error (the call goes on)."""
        try:
            self._check_text(text, field)
            answer = self._answer(served, task, text, options, no_cache, context)
            answer = await _as_field(answer, field)
            return pb.BatchItem(result=answer)
        except DeadlineExceeded:
            raise  # the call's deadline: every item shares it
        except ServiceError as e:
            if isinstance(e, Unavailable) and not self.lifecycle.accepting:
                raise  # draining now: the call's problem, not this item's
            return pb.BatchItem(error=_item_error(e))
        except Exception:  # a bug: logged with its traceback, the other items go on
            rid = request_id.get()
            log.exception("unhandled error in a GenerateBatch item (request %s)", rid)
            return pb.BatchItem(error=_item_error(Internal(f"internal error (request id {rid})")))

    async def _answer(
        self,
        served: Served,
        task: str,
        text: str,
        options: SearchOptions,
        no_cache: bool,
        context: grpc.aio.ServicerContext,
    ) -> pb.GenerateResponse:
        """From the cache, from an identical request in flight, or decoded (then cached)."""
        if not cacheable(options, no_cache):
            return _response(await self._decode(served, task, text, options, context))
        info = served.tasks[task]
        key = cache_key(info, task, text, options)
        with self.tracer.start_as_current_span("cache.lookup") as span:
            hit = await self.cache.get(key)
            span.set_attribute("hanseq.cache.hit", hit is not None)
        if hit is not None:
            response = _recalled(hit, info)
            if response is not None:
                return response
            log.warning("a cached answer for %s did not verify; decoding afresh", task)
            self.cache.reject(key)

        async def decode_and_keep() -> pb.GenerateResponse:
            outcome = await self._decode(served, task, text, options, context)
            response = _response(outcome)
            kept = pb.GenerateResponse()
            kept.CopyFrom(response)
            kept.ClearField("queue_ms")  # per request: never replayed
            kept.ClearField("compute_ms")
            kept.ClearField("batch_size")
            # under the version that decoded it, which a reload may have changed meanwhile
            decoded_by = cache_key(outcome.task_info, task, text, options)
            await self.cache.put(decoded_by, kept.SerializeToString())
            return response

        return await self.cache.single_flight(key, decode_and_keep)

    async def _decode(
        self,
        served: Served,
        task: str,
        text: str,
        options: SearchOptions,
        context: grpc.aio.ServicerContext,
    ) -> Outcome:
        submitted = time.time_ns()
        req = self._submit(served, task, text, options, context)
        try:
            outcome = await asyncio.shield(req.future)
        except asyncio.CancelledError:  # the caller left or its deadline passed
            req.cancel()
            raise
        self._trace_decode(submitted, time.time_ns(), outcome)
        return outcome

    def _trace_decode(self, submitted: int, done: int, outcome: Outcome) -> None:
        """The queue wait and the decode as spans, from the times the worker reported (they
        happened in other processes; their ends are placed from here, in nanoseconds)."""
        queued_until = min(done, submitted + int(outcome.queue_ms * 1e6))
        queue = self.tracer.start_span("queue", start_time=submitted)
        queue.end(end_time=queued_until)
        decode = self.tracer.start_span(
            "decode",
            start_time=max(queued_until, done - int(outcome.compute_ms * 1e6)),
            attributes={
                "hanseq.batch_size": outcome.batch_size,
                "hanseq.model_version": outcome.task_info.model_version,
            },
        )
        decode.end(end_time=done)

    async def _within(self, awaitable: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
        """Await within the caller's deadline."""
        try:
            return await asyncio.wait_for(awaitable, context.time_remaining())
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before the result was ready") from None

    def _submit(
        self,
        served: Served,
        task: str,
        text: str,
        options: SearchOptions,
        context: grpc.aio.ServicerContext,
        on_partial: Callable[[str], None] | None = None,
    ) -> Request:
        self._not_ready()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        request = Request(task, text, options, deadline, on_partial)
        served.batcher.submit(request)
        return request

    def _not_ready(self) -> None:
        if not self.lifecycle.accepting:
            raise Unavailable("the server is starting or stopping: models are not being served")

    def _task(self, task: str, field: str) -> str:
        """A task named in the request: missing is the request's fault (INVALID_ARGUMENT),
        not served is this server's (UNIMPLEMENTED, as for Summarize without its head)."""
        self._not_ready()
        if not task:
            served = ", ".join(self.models.tasks)
            raise InvalidArgument(field, f"must name a task; served: {served}")
        return task

    def _bundle_named(self, name: str, what: str) -> None:
        """An admin call on one bundle: serving, and the request names one."""
        self._not_ready()
        if not name:
            raise InvalidArgument("name", f"must name {what}")

    def _route(self, task: str, model: pb.ModelRef) -> Served:
        """The served version that answers: the one named, else the task's default.
        UNIMPLEMENTED for a task nothing here serves; NOT_FOUND for a model or version
        not served (both messages list what is)."""
        self._not_ready()
        return self.models.resolve(task, model.name, model.version)

    def _check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise InvalidArgument(field, "must not be empty")
        if len(text) > self.settings.max_input_chars:
            raise InvalidArgument(
                field, f"is {len(text)} characters; the limit is {self.settings.max_input_chars}"
            )

    def _dialogue_source(self, request: pb.RespondRequest, respond: TaskInfo) -> str:
        turns = list(request.history)
        if len(turns) > self.settings.max_history_turns:
            raise InvalidArgument(
                "history", f"{len(turns)} turns; the limit is {self.settings.max_history_turns}"
            )
        for i, turn in enumerate(turns):
            self._check_text(turn.text, f"history[{i}].text")
        self._check_text(request.message, "message")
        history = [Turn(t.text, t.from_user) for t in turns]
        return source_text(history, request.message, respond.context_turns)

    def _options(self, o: pb.DecodingOptions, info: TaskInfo) -> SearchOptions:
        """DecodingOptions -> SearchOptions; INVALID_ARGUMENT names the field. An unset
        option takes the task's default in the model that answers (``_defaults``)."""
        s = self.settings
        default_max = min(info.max_target_length, s.max_output_length)
        defaults = self._defaults(info)
        beam = _get(o, "beam_size", 1 if o.sample else defaults["beam_size"])
        beam = _in_range("options.beam_size", beam, 1, s.max_beam_size)
        n_best = _in_range("options.n_best", _get(o, "n_best", 1), 1, min(beam, s.max_n_best))
        max_length = _in_range(
            "options.max_length", _get(o, "max_length", default_max), 1, s.max_output_length
        )
        length_penalty = _finite(
            "options.length_penalty", _get(o, "length_penalty", defaults["length_penalty"]), 0, 5
        )
        no_repeat = _get(o, "no_repeat_ngram", defaults["no_repeat_ngram"])
        no_repeat = _in_range("options.no_repeat_ngram", no_repeat, 0, 10)
        min_length = _in_range("options.min_length", _get(o, "min_length", 0), 0, max_length - 1)
        if o.sample and beam != 1:
            raise InvalidArgument(
                "options.sample", "sampling decodes one hypothesis: beam_size must be 1"
            )
        for name in SAMPLING_ONLY:
            if o.HasField(name) and not o.sample:
                raise InvalidArgument(f"options.{name}", "applies only with sample=true")
        sampling: dict[str, Any] = {}
        if o.sample:
            sampling = {
                "temperature": _finite(
                    "options.temperature", _get(o, "temperature", 1.0), 0.01, 100.0
                ),
                "top_k": _in_range("options.top_k", _get(o, "top_k", 0), 0, 1_000_000),
                "top_p": _finite("options.top_p", _get(o, "top_p", 1.0), 1e-6, 1.0),
                "seed": o.seed if o.HasField("seed") else None,
            }
        return SearchOptions(
            beam_size=beam,
            n_best=n_best,
            max_length=max_length,
            min_length=min_length,
            length_penalty=length_penalty,
            no_repeat_ngram=no_repeat,
            sampling=o.sample,
            return_attention=o.return_attention,
            **sampling,
        )

    def _defaults(self, info: TaskInfo) -> dict[str, Any]:
        """What an unset option decodes with: the bundle's choice for the task (its beam
        capped at max_beam_size), unless the server's default_beam_size is set."""
        bundle = info.decoding
        beam = min(int(bundle.get("beam_size", 1)), self.settings.max_beam_size)
        return {
            "beam_size": self.settings.default_beam_size or beam,
            "length_penalty": float(bundle.get("length_penalty", 0.0)),
            "no_repeat_ngram": int(bundle.get("no_repeat_ngram", 0)),
        }

    def _task_infos(self) -> list[pb.TaskInfo]:
        return [self._task_info(task, i) for task, i in self.models.tasks.items()]

    def _task_info(self, task: str, i: TaskInfo) -> pb.TaskInfo:
        return pb.TaskInfo(
            task=task,
            model_id=i.model_id,
            model_version=i.model_version,
            metric=i.metric,
            valid_scores=_numbers(i.valid_scores),
            context_turns=i.context_turns,
            defaults=pb.DecodingOptions(**self._defaults(i)),
            max_source_tokens=i.max_source_length - 1,  # the last position is EOS
            model_name=i.model_name,
            bundle_version=i.bundle_version,
        )

    def _model_infos(self, keys: Sequence[ModelKey] | None = None) -> list[pb.ModelInfo]:
        """Every served version (or those of ``keys``), in name and version order."""
        shares, routes = self.models.shares(), self.models.routes
        out = []
        for key in sorted(self.models.served) if keys is None else keys:
            served = self.models.served.get(key)
            if served is None:
                continue
            share = shares.get(key, 0.0)
            out.append(
                pb.ModelInfo(
                    name=key.name,
                    version=key.version,
                    tasks=[self._task_info(t, i) for t, i in served.tasks.items()],
                    default_for=[
                        t for t, n in routes.defaults.items() if n == key.name and share > 0
                    ],
                    traffic_share=share,
                    workers=served.pool.alive_count(),
                )
            )
        return out

    def _limits(self) -> pb.Limits:
        s = self.settings
        return pb.Limits(
            max_input_chars=s.max_input_chars,
            max_beam_size=s.max_beam_size,
            max_n_best=s.max_n_best,
            max_output_length=s.max_output_length,
            max_batch_items=s.max_batch_items,
            max_history_turns=s.max_history_turns,
        )


async def _changing(what: str, change: Awaitable[T]) -> T:
    """A model change that could not be made: FAILED_PRECONDITION (the same bundles would
    fail the same way: not worth a retry), the previous models still serving."""
    try:
        return await change
    except (Unavailable, RepositoryError) as e:
        message = e.message if isinstance(e, ServiceError) else str(e)
        raise FailedPrecondition(
            f"{what} failed; the previous models still serve: {message}"
        ) from None


async def _as_field(awaitable: Awaitable[pb.GenerateResponse], field: str) -> pb.GenerateResponse:
    """An input the worker refused (too many tokens) named as the caller named it."""
    try:
        return await awaitable
    except InvalidArgument as e:
        if e.field != "text" or field == "text":
            raise
        raise InvalidArgument(field, e.problem) from None


def _note(response: pb.GenerateResponse) -> None:
    """What the request's log line says beyond its code and time."""
    note(
        queue_ms=round(response.queue_ms, 2),
        compute_ms=round(response.compute_ms, 2),
        batch_size=response.batch_size,
        cached=response.cached,
        truncated=response.truncated,
    )


def _item_error(e: ServiceError) -> pb.ItemError:
    retry_after = e.retry_after_ms if isinstance(e, Overloaded) else 0
    return pb.ItemError(
        code=e.code.value[0], code_name=e.code.name, message=e.message, retry_after_ms=retry_after
    )


async def _all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Every result, in order; when one fails the others stop (their decoding too)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()


def _get(message: pb.DecodingOptions, name: str, default: T) -> T:
    return getattr(message, name) if message.HasField(name) else default


def _in_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (got {value})")
    return int(value)


def _finite(field: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g} (got {value:g})")
    return float(value)


def _numbers(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}


def _added(before: str, now: str) -> str:
    """The text ``now`` adds to ``before``. A partial output only grows (each is the
    detokenized prefix of the next), so this is its tail."""
    return now[len(before) :] if now.startswith(before) else now


def _recalled(value: bytes, model: TaskInfo) -> pb.GenerateResponse | None:
    """A cached answer, if it is one and of the bundle now serving; None otherwise (a
    damaged or foreign value in a shared Redis must never reach a caller)."""
    try:
        response = pb.GenerateResponse.FromString(value)
    except DecodeError:
        return None
    served = (response.model_name, response.model_id, response.model_version)
    if served != (model.model_name, model.model_id, model.model_version):
        return None
    response.cached = True
    return response


def _response(outcome: Outcome, cached: bool = False) -> pb.GenerateResponse:
    r, info = outcome.result, outcome.task_info
    response = pb.GenerateResponse(
        text=r.text,
        score=r.score,
        cached=cached,
        model_id=info.model_id,
        model_version=info.model_version,
        model_name=info.model_name,
        queue_ms=outcome.queue_ms,
        compute_ms=outcome.compute_ms,
        truncated=r.truncated,
        batch_size=outcome.batch_size,
        alternatives=[pb.Alternative(text=t, score=s) for t, s in r.alternatives],
    )
    if r.attention is not None:
        rows = r.attention
        response.source_tokens.extend(r.source_tokens)
        response.target_tokens.extend(r.tokens)
        response.attention.rows = len(rows)
        response.attention.cols = len(rows[0]) if rows else 0
        response.attention.weights.extend(w for row in rows for w in row)
    return response
