"""How a client connects: TLS, the token, and the gRPC service config that does the retrying
and the load balancing (so both work the same for the sync and the async client).

Retries are gRPC's own (``retryPolicy``): a failed attempt is retried with exponential backoff
and jitter, and a server that answers RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms`` (hanseq
does) sets the pause itself, which is longer than a dropped connection's. Round-robin load
balancing spreads calls over every address a ``dns:///`` target resolves to, e.g. every pod
behind a Kubernetes headless Service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.version import __version__

SERVICE = pb.DESCRIPTOR.services_by_name["Seq2Seq"]
DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class Retry:
    """gRPC's retry policy for every call. gRPC caps ``max_attempts`` at 5 (the first try
    included); the n-th retry waits a random time up to
    ``min(initial_backoff * multiplier ** (n - 1), max_backoff)`` seconds."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError("Retry.max_attempts must be in 1..5 (gRPC's limit)")
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.multiplier < 1:
            raise ValueError("Retry backoffs must be > 0 and multiplier >= 1")
        unknown = set(self.codes) - set(grpc.StatusCode.__members__)
        if unknown:
            raise ValueError(f"Retry.codes: unknown status codes {sorted(unknown)}")


NO_RETRY = Retry(max_attempts=1)


@dataclass(frozen=True)
class TLS:
    """TLS settings. Each PEM may be given as bytes, as text, or as a path to a file. With no
    ``root_certificates`` the system's trusted roots verify the server; ``certificate_chain``
    and ``private_key`` (both or neither) are this client's own, for mutual TLS.
    ``server_name`` overrides the name checked against the server's certificate."""

    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS: give certificate_chain and private_key together (mutual TLS)")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


@dataclass(frozen=True)
class Connection:
    """Everything a channel is built from; one per client."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: TLS | bool | None = None
    retry: Retry = field(default_factory=Retry)
    max_message_bytes: int = 4 * 1024 * 1024

    def open(self, aio: bool) -> Any:
        """A grpc (or grpc.aio) channel to the target, with TLS when asked for."""
        module: Any = grpc.aio if aio else grpc
        credentials = self.credentials()
        if credentials is None:
            return module.insecure_channel(self.target, options=self.options())
        return module.secure_channel(self.target, credentials, options=self.options())

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is True:
            return grpc.ssl_channel_credentials()
        if isinstance(self.tls, TLS):
            return self.tls.credentials()
        return None

    def options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", json.dumps(service_config(self.retry))),
            ("grpc.enable_retries", 1),
            # Connections of this client's own: in gRPC's process-wide pool a new client to an
            # address whose server just restarted took over the old connection's reconnect
            # backoff and failed at once with "connection refused" (tests/test_client.py)
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.primary_user_agent", f"hanseq-client-python/{__version__}"),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if isinstance(self.tls, TLS) and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        metadata: list[tuple[str, str]] = []
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        if request_id:
            metadata.append(("x-request-id", request_id))
        return tuple(metadata)


def service_config(retry: Retry) -> dict[str, Any]:
    method_config: dict[str, Any] = {"name": [{"service": SERVICE.full_name}]}
    if retry.max_attempts > 1:
        method_config["retryPolicy"] = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": f"{retry.initial_backoff}s",
            "maxBackoff": f"{retry.max_backoff}s",
            "backoffMultiplier": retry.multiplier,
            "retryableStatusCodes": list(retry.codes),
        }
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method_config]}


def method_path(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()  # the PEM itself, not a path
    return Path(value).read_bytes()
