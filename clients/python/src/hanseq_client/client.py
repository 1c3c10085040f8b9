"""The synchronous client: one gRPC channel, safe to share between threads."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
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


class Client(ClientBase):
    """A hanseq client; the arguments are ``ClientBase``'s (target, timeout, token, tls,
    retry, wait_for_ready, max_message_bytes)."""

    # -- the tasks ---------------------------------------------------------------------------

    def translate(
        self,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        """Korean -> English."""
        return self._result(
            "Translate",
            calls.translate(text, options, calls.model_ref(model, model_version)),
            timeout,
            request_id,
        )

    def respond(
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
        """A Korean reply to ``message``; ``history``: earlier turns, oldest first."""
        request = calls.respond(message, history, options, calls.model_ref(model, model_version))
        return self._result("Respond", request, timeout, request_id)

    def summarize(
        self,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        model: str = "",
        model_version: str = "",
        **options: Unpack[DecodingOptions],
    ) -> Result:
        """A Korean summary (title) of a Korean text."""
        return self._result(
            "Summarize",
            calls.summarize(text, options, calls.model_ref(model, model_version)),
            timeout,
            request_id,
        )

    def generate(
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
        """Any task by name (``models()`` lists them)."""
        return self._result(
            "Generate",
            calls.generate(task, text, options, calls.model_ref(model, model_version)),
            timeout,
            request_id,
        )

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
    ) -> Iterator[StreamUpdate]:
        """Partial outputs as they are decoded; the last update has ``final`` and ``result``.
        Stopping the iteration early (``break``) cancels the call on the server."""
        request = calls.generate(task, text, options, calls.model_ref(model, model_version))
        return self._updates(request, timeout, request_id)

    def batch(
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
        items = self.batch_items(
            task,
            texts,
            timeout=timeout,
            request_id=request_id,
            model=model,
            model_version=model_version,
            **options,
        )
        return first_failure(items)

    def batch_items(
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
        reply, ms = self._call("GenerateBatch", request, timeout, request_id)
        return items_from_pb(reply, ms)

    # -- the models --------------------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> Models:
        """The tasks served, the bundle and version serving each, and the limits in force."""
        reply, _ = self._call("ListModels", pb.ListModelsRequest(), timeout, None)
        return models_from_pb(reply)

    def health(self, task: str | None = None, *, timeout: float | None = None) -> str:
        """The server's health, whole (no task) or one task's: "SERVING", "NOT_SERVING"
        (starting, draining, or no live worker for the task) or "SERVICE_UNKNOWN" (a task
        the server does not know)."""
        request = health.Request(service=health.service_name(task))
        try:
            reply, _ = self._call("HealthCheck", request, timeout, None)
        except InvalidInput as e:
            if e.code == "NOT_FOUND":  # the health service's answer for an unknown name
                return "SERVICE_UNKNOWN"
            raise
        return health.status_name(reply)

    def reload(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Ask the server to load its bundles again (admin); returns what serves now."""
        reply, _ = self._call("ReloadModels", pb.ReloadModelsRequest(), timeout, None)
        return [task_from_pb(t) for t in reply.tasks]

    def load_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> list[ServedModel]:
        """Load or reload bundle ``name`` (or one ``version`` of it) from the server's models
        directory, leaving the others alone (admin); returns the versions it (re)started."""
        request = pb.LoadModelRequest(name=name, version=version)
        reply, _ = self._call("LoadModel", request, timeout, None)
        return [served_from_pb(m) for m in reply.loaded]

    def unload_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> list[ServedModel]:
        """Stop serving bundle ``name`` (or one ``version``) once what it holds is answered
        (admin); returns every version still served."""
        request = pb.UnloadModelRequest(name=name, version=version)
        reply, _ = self._call("UnloadModel", request, timeout, None)
        return [served_from_pb(m) for m in reply.models]

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _result(self, method: str, request: Any, timeout: float | None, rid: str | None) -> Result:
        reply, ms = self._call(method, request, timeout, rid)
        return result_from_pb(reply, ms)

    def _call(
        self, method: str, request: Any, timeout: float | None, rid: str | None
    ) -> tuple[Any, float]:  # the reply: the method's response message
        started = time.perf_counter()
        try:
            reply = self._start(method, request, timeout, rid)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return reply, (time.perf_counter() - started) * 1000

    def _updates(
        self, request: Any, timeout: float | None, rid: str | None
    ) -> Iterator[StreamUpdate]:
        started, deadline = time.perf_counter(), self._deadline(timeout)
        resumption = self._resumption(request)
        while True:
            call = self._start("GenerateStream", request, deadline - time.perf_counter(), rid)
            resumption.restart()
            try:
                for reply in call:
                    if resumption.fresh():
                        yield update_from_pb(reply, (time.perf_counter() - started) * 1000)
                return
            except grpc.RpcError as e:
                pause = resumption.pause_before_retry(e.code())
                if pause is None or time.perf_counter() + pause >= deadline:
                    raise from_rpc_error(e) from None
                time.sleep(pause)
            finally:
                call.cancel()  # a no-op once the stream has ended; frees the server otherwise
