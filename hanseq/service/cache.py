"""The response cache: an in-process LRU in front of an optional shared Redis.

The same question is often asked many times (templated UI strings, repeated chat openers), so
an answer is kept under a hash of everything that decides it: the bundle's id and version, the
task, the normalized input and the canonical decoding options. A new bundle version therefore
never serves an old answer. Sampling without a seed is never cached, and ``no_cache`` skips
both layers. Values are the response's protobuf bytes.

Redis is an accelerator, never a dependency: its calls have short timeouts, and after a failure
a circuit breaker skips it for ``cache_breaker_s`` before trying again. Meanwhile requests are
served uncached, an error counter rises, and one log line marks the outage and one its end.

Identical requests already in flight share one decode (single flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hanseq.engine.korean import normalize
from hanseq.engine.options import SearchOptions
from hanseq.service.protocol import TaskInfo

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_key(model: TaskInfo, task: str, text: str, options: SearchOptions) -> str:
    """A hex digest of what decides an answer: the served bundle (name, id, served version
    and the version its manifest records), task, input, options."""
    fields = sorted(dataclasses.asdict(options).items())
    served = [model.model_name, model.model_id, model.model_version, model.bundle_version]
    canonical = json.dumps(
        [*served, task, normalize(text), fields],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def cacheable(options: SearchOptions, no_cache: bool) -> bool:
    """Sampling without a seed is meant to differ every time; no_cache asks for a fresh one."""
    return not no_cache and not (options.sampling and options.seed is None)


class LocalCache:
    """Least recently used, bounded by entry count and by the bytes of the values."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes or self.max_entries <= 0:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[key] = value
        self.bytes += len(value)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= len(evicted)


class RedisCache:
    """The shared layer: every replica of the service reads what any of them decoded."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: float,
        timeout_s: float,
        breaker_s: float,
        on_error: Callable[[], None] = lambda: None,
        password: str = "",
    ):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.prefix, self.ttl_ms, self.breaker_s = prefix, max(1, int(ttl_s * 1000)), breaker_s
        self.on_error = on_error
        extra: dict[str, Any] = {"password": password} if password else {}  # else the URL's
        self._client = redis.Redis.from_url(
            url,
            **extra,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the breaker decides when to try again, not a loop
            health_check_interval=0,
        )
        self._skip_until = 0.0
        self._down = False
        self._url = redacted(url)  # for the log: never the password

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        return await self._call(self._client.get(self.prefix + key))

    async def put(self, key: str, value: bytes) -> None:
        if self.available:
            await self._call(self._client.set(self.prefix + key, value, px=self.ttl_ms))

    async def _call(self, command: Awaitable[Any]) -> Any:
        try:
            result = await command
        except Exception as e:  # a cache failure must never fail a request
            self._skip_until = time.monotonic() + self.breaker_s
            self.on_error()
            # Drop every pooled connection, not just this one: after a Redis restart each of
            # them is dead, and failing them one by one would trip the breaker again and again.
            with contextlib.suppress(Exception):
                await self._client.connection_pool.disconnect()
            if not self._down:
                self._down = True
                log.error("Redis cache at %s failed (%s): serving uncached", self._url, e)
            return None
        if self._down:
            self._down = False
            log.info("Redis cache at %s is back", self._url)
        return result

    async def close(self) -> None:
        await self._client.aclose()


def redacted(url: str) -> str:
    """redis://user:secret@host:6379/0 -> redis://user:***@host:6379/0"""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


class ResponseCache:
    """Both layers and the single-flight table, as the servicer uses them."""

    def __init__(
        self,
        local: LocalCache,
        shared: RedisCache | None,
        on_lookup: Callable[[str, str], None] = lambda layer, result: None,
    ):
        self.local, self.shared, self.on_lookup = local, shared, on_lookup
        self._flights: dict[str, asyncio.Future] = {}

    async def get(self, key: str) -> bytes | None:
        value = self.local.get(key)
        self.on_lookup("local", "hit" if value is not None else "miss")
        if value is not None or self.shared is None or not self.shared.available:
            return value
        value = await self.shared.get(key)
        self.on_lookup("redis", "hit" if value is not None else "miss")
        if value is not None:
            self.local.put(key, value)
        return value

    def reject(self, key: str) -> None:
        """A value that did not verify: forget it here (Redis is overwritten on the next put)."""
        self.local.drop(key)
        self.on_lookup("any", "invalid")

    async def put(self, key: str, value: bytes) -> None:
        self.local.put(key, value)
        if self.shared is not None:
            await self.shared.put(key, value)

    async def single_flight(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()``, unless an identical request is already computing: then its result.
        A follower whose leader fails (its caller left, its deadline passed) computes anew."""
        leader = self._flights.get(key)
        if leader is not None:
            try:
                return await asyncio.shield(leader)
            except asyncio.CancelledError:
                if not leader.cancelled():
                    raise  # this caller was cancelled, not the leader
            except Exception:
                pass
            return await compute()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        self._flights[key] = future
        try:
            result = await compute()
        except BaseException as e:
            if isinstance(e, Exception):
                future.set_exception(e)
            else:
                future.cancel()
            raise
        finally:
            self._flights.pop(key, None)
        future.set_result(result)
        return result

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
