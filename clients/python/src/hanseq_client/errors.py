"""What can go wrong, as exceptions: one class per kind of failure, one mapping function.

Every error from the public API is a ``HanseqError`` carrying the gRPC status name and the
server's message (which names the field and the limit). No ``grpc.RpcError`` leaks out.
"""

from __future__ import annotations

import grpc

from hanseq_client._proto import hanseq_pb2 as pb


class HanseqError(Exception):
    """Base class. ``code``: the gRPC status name; ``message``: what the server said;
    ``request_id``: the server's id for this call (quote it when reporting a bug)."""

    retryable = False

    def __init__(self, message: str, *, code: str = "UNKNOWN", request_id: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code, self.message, self.request_id = code, message, request_id


class InvalidInput(HanseqError):
    """The request was refused as it stands: empty text, over a limit, no task named, options
    out of range. Retrying the same request cannot succeed."""


class Unsupported(HanseqError):
    """The server does not serve this (a task its bundles lack, or an older server)."""


class FailedPrecondition(HanseqError):
    """The server cannot do this as it stands: e.g. a reload whose bundles failed to load (the
    previous models still serve). The request is fine; the server's files need fixing."""


class Overloaded(HanseqError):
    """The server's queue is full, or a rate limit was hit. ``retry_after`` (seconds, or None)
    is the pause the server asked for; the client already retried before raising this."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: str):
        super().__init__(message, **kw)  # code, request_id
        self.retry_after = retry_after


class Unavailable(HanseqError):
    """No server could take the call: none reachable, starting, draining, or the worker holding
    the request died. The client already retried before raising this."""

    retryable = True


class DeadlineExceeded(HanseqError):
    """The deadline (the client's ``timeout``) passed before the answer was ready."""


class Unauthenticated(HanseqError):
    """No token, or a wrong one."""


class PermissionDenied(HanseqError):
    """The token is valid but may not do this (e.g. reload the models)."""


class Cancelled(HanseqError):
    """The call was cancelled (by this process, or by the server shutting down)."""


class ServerError(HanseqError):
    """A bug on the server's side (INTERNAL, UNKNOWN, DATA_LOSS); the message carries the
    request id to look up in the server's log."""


_BY_CODE: dict[grpc.StatusCode, type[HanseqError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: InvalidInput,
    grpc.StatusCode.UNIMPLEMENTED: Unsupported,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}


def from_rpc_error(error: grpc.RpcError) -> HanseqError:
    """The one place a gRPC failure becomes a hanseq exception."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    trailers = _trailers(error)
    kind = _BY_CODE.get(code, HanseqError)
    kw = {"code": code.name, "request_id": trailers.get("x-request-id", "")}
    if kind is Overloaded:
        return Overloaded(details, retry_after=_pushback(trailers), **kw)
    return kind(details, **kw)


def from_item_error(error: pb.ItemError) -> HanseqError:
    """A GenerateBatch input's own error, as the same exception a whole call would raise."""
    code = getattr(grpc.StatusCode, error.code_name, grpc.StatusCode.UNKNOWN)
    kind = _BY_CODE.get(code, HanseqError)
    if kind is Overloaded:
        retry_after = error.retry_after_ms / 1000 if error.retry_after_ms else None
        return Overloaded(error.message, retry_after=retry_after, code=code.name)
    return kind(error.message, code=error.code_name or code.name)


def _trailers(error: grpc.RpcError) -> dict[str, str]:
    try:
        pairs = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    except Exception:  # a call that never reached a server has none to give
        pairs = None
    return {k: v for k, v in (pairs or ()) if isinstance(v, str)}


def _pushback(trailers: dict[str, str]) -> float | None:
    try:
        return int(trailers["grpc-retry-pushback-ms"]) / 1000
    except (KeyError, ValueError):
        return None
