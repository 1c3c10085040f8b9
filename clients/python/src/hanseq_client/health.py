"""The standard gRPC health check (grpc.health.v1.Health/Check) without another dependency:
its two messages are described here and built by protobuf's message factory. hanseq answers
for "" (the whole server), for its service, and for each task as "hanseq.v1.Seq2Seq/TASK"."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hanseq_client.channel import SERVICE

PATH = "/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus, by number; SERVICE_UNKNOWN is what this client reports
# for a name the server does not know (the server answers NOT_FOUND).
STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _messages() -> tuple[Any, Any]:
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="hanseq_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(STATUSES):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=f.TYPE_ENUM,
        label=f.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    # A pool of its own: the server's grpcio-health-checking may define the same names.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request_class, response_class = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{m}"))
        for m in ("HealthCheckRequest", "HealthCheckResponse")
    )
    return request_class, response_class


Request, Response = _messages()


def service_name(task: str | None) -> str:
    """The name health answers to: "" for the whole server, else the task's."""
    return f"{SERVICE.full_name}/{task}" if task else ""


def status_name(reply: Any) -> str:
    return STATUSES[reply.status] if 0 <= reply.status < len(STATUSES) else "UNKNOWN"


def stub(channel: Any) -> Any:
    return channel.unary_unary(
        PATH,
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )
