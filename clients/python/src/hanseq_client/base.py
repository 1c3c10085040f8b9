"""What Client and AsyncClient share: the connection, the default deadline, the callables."""

from __future__ import annotations

import time
from typing import Any

from hanseq_client import calls
from hanseq_client.channel import DEFAULT_TARGET, TLS, Connection, Retry


class ClientBase:
    """``target``: ``host:port``, or ``dns:///name:port`` to spread calls over every address
    the name resolves to. ``timeout``: the deadline of every call, in seconds, unless a call
    gives its own. ``token``: sent as ``authorization: Bearer ...``. ``tls``: ``True`` (the
    system's roots) or a ``TLS`` (own roots, mutual TLS). ``retry``: gRPC's retry policy
    (``NO_RETRY`` turns it off). ``wait_for_ready``: wait (within the deadline) for a server to
    come up instead of failing at once when none is reachable."""

    _aio = False  # which gRPC channel: grpc or grpc.aio

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        tls: TLS | bool | None = None,
        retry: Retry | None = None,
        wait_for_ready: bool = False,
        max_message_bytes: int = 4 * 1024 * 1024,
    ):
        self._conn = Connection(target, token, tls, retry or Retry(), max_message_bytes)
        self.timeout, self.wait_for_ready = timeout, wait_for_ready
        self._channel = self._conn.open(aio=self._aio)
        self._stubs = calls.stubs(self._channel)

    @property
    def target(self) -> str:
        return self._conn.target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    def _start(self, method: str, request: Any, timeout: float | None, rid: str | None) -> Any:
        """The call in flight (sync: its reply; aio: an awaitable; streams: an iterator)."""
        return self._stubs[method](
            request,
            timeout=max(0.0, self.timeout if timeout is None else timeout),
            metadata=self._conn.metadata(rid),
            wait_for_ready=self.wait_for_ready,
        )

    def _resumption(self, request: Any) -> calls.StreamResumption:
        retry = self._conn.retry
        return calls.StreamResumption(request, retry.max_attempts, retry.initial_backoff)

    def _deadline(self, timeout: float | None) -> float:
        return time.perf_counter() + (self.timeout if timeout is None else timeout)
