"""The asyncio client: the same methods as ``Client``, awaited; ``stream`` is an async iterator.
Use it from one event loop (gRPC's asyncio channels belong to the loop that first uses them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Unpack

import grpc

from hanseq_client import calls, health
from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.base import ClientBase
from hanseq_client.errors import HanseqError, InvalidInput, from_rpc_error
from hanseq_client.inputs import DecodingOptions, Turn
from hanseq_client.results import (
    ModelInfo,
    Models,
    Result,
    ServedModel,
    StreamUpdate,
    first_failure,
    items_from_pb,
    models_from_pb,
    result_from_pb,
    served_from_pb,
    task_from_pb,
    update_from_pb,
)


class AsyncClient(ClientBase):
    """A hanseq client for asyncio; the arguments are ``ClientBase``'s, as for ``Client``."""

    _aio = True

    async def translate(
        self,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        return await self._result(
            "Translate",
            calls.translate(text, options, calls.model_ref(model, model_version)),
            timeout,
            request_id,
        )

    async def respond(
        self,
        message: str,
        history: Sequence[Turn | tuple[str, bool]] = (),
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        request = calls.respond(message, history, options, calls.model_ref(model, model_version))
        return await self._result("Respond", request, timeout, request_id)

    async def summarize(
        self,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        return await self._result(
            "Summarize",
            calls.summarize(text, options, calls.model_ref(model, model_version)),
            timeout,
            request_id,
        )

    async def generate(
        self,
        task: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        request = calls.generate(task, text, options, calls.model_ref(model, model_version))
        return await self._result("Generate", request, timeout, request_id)

    def stream(
        self,
        task: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> AsyncIterator[StreamUpdate]:
        """``async for update in client.stream(...)``; leaving the loop early cancels the call."""
        request = calls.generate(task, text, options, calls.model_ref(model, model_version))
        return self._updates(request, timeout, request_id)

    async def batch(
        self,
        task: str,
        texts: Iterable[str],
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> list[Result]:
        """Many texts of one task in one call; results in the order of ``texts``. If an input
        failed (empty, over a limit, its queue full), its error is raised: the first one's;
        ``batch_items`` returns every input's result or error instead."""
        items = await self.batch_items(
            task,
            texts,
            timeout=timeout,
            request_id=request_id,
            model=model,
            model_version=model_version,
            **options,
        )
        return first_failure(items)

    async def batch_items(
        self,
        task: str,
        texts: Iterable[str],
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> list[Result | HanseqError]:
        """Each input's ``Result``, or its own error (the exception a single call would
        raise, e.g. ``InvalidInput`` naming ``texts[i]``), in the order of ``texts``. The
        call itself raises only for what concerns it whole (task, options, auth, deadline)."""
        request = calls.batch(task, texts, options, calls.model_ref(model, model_version))
        if not request.texts:
            return []
        reply, ms = await self._call("GenerateBatch", request, timeout, request_id)
        return items_from_pb(reply, ms)

    async def models(self, *, timeout: float | None = None) -> Models:
        reply, _ = await self._call("ListModels", pb.ListModelsRequest(), timeout, None)
        return models_from_pb(reply)

    async def health(self, task: str | None = None, *, timeout: float | None = None) -> str:
        """The server's health, whole (no task) or one task's: "SERVING", "NOT_SERVING"
        (starting, draining, or no live worker for the task) or "SERVICE_UNKNOWN" (a task
        the server does not know)."""
        request = health.Request(service=health.service_name(task))
        try:
            reply, _ = await self._call("HealthCheck", request, timeout, None)
        except InvalidInput as e:
            if e.code == "NOT_FOUND":  # the health service's answer for an unknown name
                return "SERVICE_UNKNOWN"
            raise
        return health.status_name(reply)

    async def reload(self, *, timeout: float | None = None) -> list[ModelInfo]:
        reply, _ = await self._call("ReloadModels", pb.ReloadModelsRequest(), timeout, None)
        return [task_from_pb(t) for t in reply.tasks]

    async def load_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> list[ServedModel]:
        request = pb.LoadModelRequest(name=name, version=version)
        reply, _ = await self._call("LoadModel", request, timeout, None)
        return [served_from_pb(m) for m in reply.loaded]

    async def unload_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> list[ServedModel]:
        request = pb.UnloadModelRequest(name=name, version=version)
        reply, _ = await self._call("UnloadModel", request, timeout, None)
        return [served_from_pb(m) for m in reply.models]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _result(
        self, method: str, request: Any, timeout: float | None, rid: str | None
    ) -> Result:
        reply, ms = await self._call(method, request, timeout, rid)
        return result_from_pb(reply, ms)

    async def _call(
        self, method: str, request: Any, timeout: float | None, rid: str | None
    ) -> tuple[Any, float]:  # the reply: the method's response message
        started = time.perf_counter()
        try:
            reply = await self._start(method, request, timeout, rid)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return reply, (time.perf_counter() - started) * 1000

    async def _updates(
        self, request: Any, timeout: float | None, rid: str | None
    ) -> AsyncIterator[StreamUpdate]:
        started, deadline = time.perf_counter(), self._deadline(timeout)
        resumption = self._resumption(request)
        while True:
            call = self._start("GenerateStream", request, deadline - time.perf_counter(), rid)
            resumption.restart()
            try:
                async for reply in call:
                    if resumption.fresh():
                        yield update_from_pb(reply, (time.perf_counter() - started) * 1000)
                return
            except grpc.RpcError as e:
                pause = resumption.pause_before_retry(e.code())
                if pause is None or time.perf_counter() + pause >= deadline:
                    raise from_rpc_error(e) from None
                await asyncio.sleep(pause)
            finally:
                call.cancel()
