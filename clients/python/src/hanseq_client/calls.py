"""The service's methods and their request messages, shared by Client and AsyncClient.

The callables come from the proto's service descriptor (no generated stub module): a method
added to the proto is callable here without new code, and a name that is not in the proto
fails at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory

from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.channel import SERVICE, method_path
from hanseq_client.inputs import (
    Turn,
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
    return table


def translate(text: str, options: Mapping[str, Any]) -> pb.TranslateRequest:
    return pb.TranslateRequest(text=text_field("text", text), options=decoding_options(options))


def respond(
    message: str, history: Sequence[Turn | tuple[str, bool]], options: Mapping[str, Any]
) -> pb.RespondRequest:
    return pb.RespondRequest(
        message=text_field("message", message),
        history=history_field(history),
        options=decoding_options(options),
    )


def summarize(text: str, options: Mapping[str, Any]) -> pb.SummarizeRequest:
    return pb.SummarizeRequest(text=text_field("text", text), options=decoding_options(options))


def generate(task: str, text: str, options: Mapping[str, Any]) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        task=text_field("task", task),
        text=text_field("text", text),
        options=decoding_options(options),
    )


def batch(task: str, texts: Iterable[str], options: Mapping[str, Any]) -> pb.GenerateBatchRequest:
    return pb.GenerateBatchRequest(
        task=text_field("task", task),
        texts=texts_field("texts", texts),
        options=decoding_options(options),
    )
