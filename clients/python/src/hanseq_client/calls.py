"""The service's methods and their request messages, shared by Client and AsyncClient.

The callables come from the proto's service descriptor (no generated stub module): a method
added to the proto is callable here without new code, and a name that is not in the proto
fails at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory

from hanseq_client import health
from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.channel import SERVICE, method_path
from hanseq_client.inputs import (
    Turn,
    _invalid,
    decoding_options,
    history_field,
    text_field,
    texts_field,
)


def stubs(channel: Any) -> dict[str, Any]:
    """Method name -> multi-callable, for a ``grpc.Channel`` or a ``grpc.aio.Channel``."""
    table = {}
    for method in SERVICE.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = channel.unary_stream if method.server_streaming else channel.unary_unary
        table[method.name] = make(
            method_path(method.name),
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
    table["HealthCheck"] = health.stub(channel)
    return table


def model_ref(name: str, version: str) -> pb.ModelRef:
    """Which bundle and version should answer; empty: the server's default for the task."""
    if version and not name:
        raise _invalid("model_version", "is a version of a bundle: give model= too")
    return pb.ModelRef(name=name or "", version=version or "")


def translate(text: str, options: Mapping[str, Any], model: pb.ModelRef) -> pb.TranslateRequest:
    return pb.TranslateRequest(
        text=text_field("text", text), options=decoding_options(options), model=model
    )


def respond(
    message: str,
    history: Sequence[Turn | tuple[str, bool]],
    options: Mapping[str, Any],
    model: pb.ModelRef,
) -> pb.RespondRequest:
    return pb.RespondRequest(
        message=text_field("message", message),
        history=history_field(history),
        options=decoding_options(options),
        model=model,
    )


def summarize(text: str, options: Mapping[str, Any], model: pb.ModelRef) -> pb.SummarizeRequest:
    return pb.SummarizeRequest(
        text=text_field("text", text), options=decoding_options(options), model=model
    )


def generate(
    task: str, text: str, options: Mapping[str, Any], model: pb.ModelRef
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        task=text_field("task", task),
        text=text_field("text", text),
        options=decoding_options(options),
        model=model,
    )


def batch(
    task: str, texts: Iterable[str], options: Mapping[str, Any], model: pb.ModelRef
) -> pb.GenerateBatchRequest:
    return pb.GenerateBatchRequest(
        task=text_field("task", task),
        texts=texts_field("texts", texts),
        options=decoding_options(options),
        model=model,
    )


class StreamResumption:
    """Keeps a stream going when its connection drops (the server restarting, a worker dying).

    gRPC retries a call only until its first message arrives; a stream that fails after that
    is the caller's to redo. A deterministic stream (greedy, beam, or sampling with a seed)
    sends the same messages again, so it is re-sent and the messages already delivered are
    skipped: the consumer sees one unbroken stream. Unseeded sampling would start a different
    output, so it fails as before.
    """

    def __init__(self, request: pb.GenerateRequest, max_attempts: int, backoff: float):
        options = request.options
        self.deterministic = not options.sample or options.HasField("seed")
        self.left, self.backoff, self.delivered, self.seen = max_attempts - 1, backoff, 0, 0

    def restart(self) -> None:
        self.seen = 0

    def fresh(self) -> bool:
        """Called per message received: deliver it, or skip it (delivered before a drop)."""
        self.seen += 1
        if self.seen > self.delivered:
            self.delivered = self.seen
            return True
        return False

    def pause_before_retry(self, code: grpc.StatusCode) -> float | None:
        """Seconds to wait before re-sending, or None: give up and raise."""
        if code != grpc.StatusCode.UNAVAILABLE or not self.deterministic or self.left <= 0:
            return None
        if not self.delivered:
            return None  # nothing arrived: gRPC's own retries have already had their go
        self.left -= 1
        self.backoff *= 2
        return random.uniform(0, self.backoff)
