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


class InvalidArgument(ServiceError):
    """Bad input: the message names the field and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(ServiceError):
    """A task the loaded bundles do not have, asked for by its own RPC (Summarize, ...)."""

    code = grpc.StatusCode.UNIMPLEMENTED
