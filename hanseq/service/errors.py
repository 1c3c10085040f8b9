"""Errors a caller can see: each carries its gRPC status code and a message for the caller.

Raised anywhere in the service, turned into a status by the error interceptor. Anything else
that escapes a handler is a bug: logged with its traceback, answered INTERNAL with a request id.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Extra trailing metadata sent with this status."""
        return ()


class InvalidArgument(ServiceError):
    """Bad input: the message names the field and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class Overloaded(ServiceError):
    """Too much work queued. ``retry_after_ms`` travels as ``grpc-retry-pushback-ms``, which
    gRPC's own retry policy (the one the bundled client configures) obeys instead of its
    backoff: an overloaded server asks for a longer pause than a flaky connection gets."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return (("grpc-retry-pushback-ms", str(self.retry_after_ms)),)


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class PermissionDenied(ServiceError):
    """The caller is known but may not do this (an admin RPC without an admin token)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ServiceError):
    """The server cannot do this as things stand (a reload whose bundles do not load)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(ServiceError):
    """A model or version the request names that is not served: the message names the field
    and what is served."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class Unimplemented(ServiceError):
    """A task the loaded bundles do not have, asked for by its own RPC (Summarize, ...)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ServiceError):
    """A bug on our side, told to the caller as such (the message carries the request id)."""

    code = grpc.StatusCode.INTERNAL
