"""Who may call, and what: bearer tokens (``authorization: Bearer <token>``), roles and TLS.

With tokens configured, every call needs one of them, except the health service, which
probes (kubelet, load balancers) must reach without secrets; admin RPCs (ReloadModels) need a
token marked ``admin:`` (PERMISSION_DENIED otherwise). With no tokens, admin RPCs are refused
unless ``admin_without_auth`` is set: any pod that can reach the port could otherwise reload.
Tokens are compared in constant time, and every configured token is compared, so timing tells
nothing about which one nearly matched. A refused call gets UNAUTHENTICATED (or
PERMISSION_DENIED) and reaches nothing behind this interceptor.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from hanseq.engine.config import ConfigurationError
from hanseq.service.errors import PermissionDenied, ServiceError
from hanseq.service.servicer import SERVICE
from hanseq.service.settings import Settings, env_name

OPEN_PREFIX = "/grpc.health.v1.Health/"
HANSEQ_PREFIX = "/hanseq.v1."
ADMIN_METHODS = frozenset(f"/{SERVICE}/{m}" for m in ("ReloadModels", "LoadModel", "UnloadModel"))
ADMIN = "admin:"  # a token written admin:TOKEN may also call the admin RPCs


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


@dataclass(frozen=True)
class Tokens:
    """The configured tokens: every one may call; ``admins`` may also call admin RPCs."""

    callers: tuple[bytes, ...] = ()
    admins: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.callers)


def load_tokens(s: Settings) -> Tokens:
    """The tokens from ``auth_tokens_file`` and ``auth_tokens``; none = no authentication."""
    tokens = [t.strip() for t in s.auth_tokens.split(",")]
    if s.auth_tokens_file:
        lines = Path(s.auth_tokens_file).read_text(encoding="utf-8").splitlines()
        tokens += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    tokens = [t for t in tokens if t]
    plain = [t.removeprefix(ADMIN).strip() for t in tokens]
    short = [t for t in plain if len(t) < 16]
    if short:
        raise ConfigurationError(
            f"auth tokens ({env_name('auth_tokens_file')}, {env_name('auth_tokens')}) must be "
            f"at least 16 characters; {len(short)} is shorter"
        )
    admins = [p for t, p in zip(tokens, plain, strict=True) if t.startswith(ADMIN)]
    return Tokens(tuple(t.encode() for t in plain), tuple(t.encode() for t in admins))


def presented(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip().encode()
    return None


def token_ok(tokens: tuple[bytes, ...], token: bytes | None) -> bool:
    ok = False
    for known in tokens:  # no early exit: the time taken does not depend on which matched
        ok |= hmac.compare_digest(known, token or b"")
    return ok and token is not None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Placed inside the error interceptor, so a refusal is counted and logged like any status.
    Installed always: without tokens it still guards the admin RPCs."""

    def __init__(self, tokens: Tokens, admin_without_auth: bool = False):
        self.tokens, self.admin_without_auth = tokens, admin_without_auth
        self._refusing: dict[tuple[str, str], grpc.RpcMethodHandler] = {}  # (method, why)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIX):
            return handler
        token = presented(details.invocation_metadata)
        if self.tokens and not token_ok(self.tokens.callers, token):
            return self._refuse(handler, details.method, "unauthenticated")
        if details.method in ADMIN_METHODS and not self._admin(token):
            return self._refuse(handler, details.method, "not admin")
        return handler

    def _admin(self, token: bytes | None) -> bool:
        if self.tokens:
            return token_ok(self.tokens.admins, token)
        return self.admin_without_auth

    def _refuse(
        self, handler: grpc.RpcMethodHandler, method: str, why: str
    ) -> grpc.RpcMethodHandler:
        refusing = self._refusing.get((method, why))
        if refusing is None:
            if why == "unauthenticated":
                error: ServiceError = Unauthenticated(MESSAGE)
            else:
                error = PermissionDenied(ADMIN_ONLY if self.tokens else ADMIN_OFF)
            hanseq = method.startswith(HANSEQ_PREFIX)
            refusing = self._refusing[(method, why)] = _refusing(handler, hanseq, error)
        return refusing


MESSAGE = "missing or invalid bearer token (metadata authorization: Bearer <token>)"
ADMIN_ONLY = "an admin RPC: it needs a token marked admin: in the server's tokens"
ADMIN_OFF = (
    "admin RPCs are off on a server without tokens: configure an admin:TOKEN "
    "(HANSEQ_AUTH_TOKENS_FILE), or set HANSEQ_ADMIN_WITHOUT_AUTH=true on a trusted network"
)


def _refusing(
    handler: grpc.RpcMethodHandler, hanseq: bool, error: ServiceError
) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses. hanseq's own methods raise (the error
    interceptor outside turns it into the status and counts it); others, e.g. reflection,
    have no such interceptor and abort themselves."""

    # request: unused; a message, or for client-streaming methods an iterator of them
    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        if hanseq:
            raise error
        await context.abort(error.code, error.message)

    async def refuse_stream(
        request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        await refuse(request, context)
        yield  # pragma: no cover  (never reached: refuse raises)

    kind = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.stream_stream_rpc_method_handler
    )
    streaming_out = handler.unary_stream or handler.stream_stream
    return kind(
        refuse_stream if streaming_out else refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    """TLS from the settings, or None for plaintext."""
    if not s.tls_cert_file:
        return None
    key, chain = Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes()
    roots = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
