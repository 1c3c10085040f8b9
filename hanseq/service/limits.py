"""How much one caller may ask: a token bucket per caller (inputs per second, with a burst)
and a cap on its requests in flight. A caller is its bearer token when it sends one, else its
network address. Over a limit -> RESOURCE_EXHAUSTED whose retry hint says when the bucket
will hold enough again, so one greedy caller cannot starve the others of the queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hanseq.service.errors import Overloaded

FORGET_AFTER_S = 600.0  # a caller idle this long (bucket full, nothing in flight) is dropped


@dataclass
class _Caller:
    tokens: float
    stamp: float
    in_flight: int = 0


class CallerLimits:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        concurrency: int,
        retry_after_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate, self.concurrency, self.retry_after_ms = rate_per_s, concurrency, retry_after_ms
        self.burst = float(burst or max(1, math.ceil(2 * rate_per_s)))
        self.clock = clock
        self._callers: dict[str, _Caller] = {}

    @property
    def active(self) -> bool:
        return self.rate > 0 or self.concurrency > 0

    @contextlib.contextmanager
    def admit(self, caller: str, cost: int = 1) -> Iterator[None]:
        """Around one request of ``cost`` inputs; raises Overloaded when over a limit."""
        if not self.active:
            yield
            return
        now = self.clock()
        state = self._state(caller, now)
        if self.concurrency and state.in_flight >= self.concurrency:
            raise Overloaded(
                f"this caller has {state.in_flight} requests in flight, the limit "
                f"(caller_concurrency); retry after {self.retry_after_ms} ms",
                retry_after_ms=self.retry_after_ms,
            )
        if self.rate > 0:
            self._take(state, min(float(cost), self.burst))
        state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1

    def _state(self, caller: str, now: float) -> _Caller:
        state = self._callers.get(caller)
        if state is None:
            if len(self._callers) > 10_000:
                self._forget(now)
            state = self._callers[caller] = _Caller(tokens=self.burst, stamp=now)
        else:
            state.tokens = min(self.burst, state.tokens + (now - state.stamp) * self.rate)
            state.stamp = now
        return state

    def _take(self, state: _Caller, cost: float) -> None:
        if state.tokens < cost:
            wait_ms = max(1, math.ceil(1000 * (cost - state.tokens) / self.rate))
            raise Overloaded(
                f"this caller is over its rate ({self.rate:g} inputs/s, burst "
                f"{self.burst:g}: caller_rate_per_s); retry after {wait_ms} ms",
                retry_after_ms=wait_ms,
            )
        state.tokens -= cost

    def _forget(self, now: float) -> None:
        idle = [
            k
            for k, s in self._callers.items()
            if s.in_flight == 0 and now - s.stamp > FORGET_AFTER_S
        ]
        for key in idle:
            del self._callers[key]


def caller_of(token: bytes | None, peer: str) -> str:
    """A token (hashed: never kept in the clear here) or the address without its port."""
    if token:
        return "token:" + hashlib.sha256(token).hexdigest()[:16]
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
    return "peer:" + host
