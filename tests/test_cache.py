"""The response cache and the metrics, against real servers (port 0, real workers) and a real
redis-server: local hits, a second server reading the first one's answers through Redis, a
Redis outage that fails no request, recovery, and a new bundle version that misses. The
metrics are scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import urllib.request

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from hanseq.engine.options import SearchOptions
from hanseq.service.cache import LocalCache, cache_key, cacheable, redacted
from hanseq.service.protocol import TaskInfo
from hanseq.service.server import create_app
from hanseq.service.settings import load_settings
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import RedisServer, reversal_pairs

ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # the fixture's loop
TEXTS = [line.split("\t")[0] for line in reversal_pairs(20, seed=77)]
MODEL = TaskInfo(model_id="m", model_version="1", metric="bleu")
FRESH = pb.DecodingOptions(no_cache=True)


# ---- the pieces ------------------------------------------------------------------------------
def test_local_cache_is_bounded_by_entries_and_bytes():
    cache = LocalCache(max_entries=3, max_bytes=10)
    for key in "abc":
        cache.put(key, b"xx")
    cache.get("a")  # now the most recently used
    cache.put("d", b"xx")
    assert cache.get("b") is None and cache.get("a") == b"xx" and len(cache) == 3
    cache.put("e", b"xxxxxxxx")  # 2 + 2 + 8 > 10: the least recently used go
    assert cache.bytes <= 10 and cache.get("e") == b"xxxxxxxx"
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get("huge") is None


def test_the_key_changes_with_everything_that_decides_the_answer():
    one, two = SearchOptions(beam_size=1), SearchOptions(beam_size=2)
    base = cache_key(MODEL, "translate", "안녕  하세요", one)
    assert base == cache_key(MODEL, "translate", " 안녕 하세요 ", one)  # same input
    assert base != cache_key(
        dataclasses.replace(MODEL, model_version="2"), "translate", "안녕 하세요", one
    )
    assert base != cache_key(MODEL, "summarize", "안녕 하세요", one)
    assert base != cache_key(MODEL, "translate", "안녕 하세요", two)


def test_what_is_cacheable():
    assert cacheable(SearchOptions(sampling=False), no_cache=False)
    assert not cacheable(SearchOptions(sampling=False), no_cache=True)
    assert not cacheable(SearchOptions(sampling=True, seed=None), no_cache=False)
    assert cacheable(SearchOptions(sampling=True, seed=7), no_cache=False)


# ---- against servers -------------------------------------------------------------------------
def settings_for(models, **overrides):
    base = {"port": 0, "metrics_port": 0, "models": str(models), "devices": "cpu"}
    base |= {"cpu_threads": 1, "max_queue_delay_ms": 2}
    return load_settings({**base, **overrides}, env={})


@pytest_asyncio.fixture(loop_scope="module")
async def start(service_bundle_path):
    """start(**settings) -> (app, stub); everything started is stopped after the test."""
    started = []

    async def starter(models=service_bundle_path, **overrides):
        app = await create_app(settings_for(models, **overrides))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        started.append((app, channel))
        return app, hanseq_pb2_grpc.Seq2SeqStub(channel)

    yield starter
    for app, channel in started:
        await channel.close()
        await app.stop()


def scrape(app) -> dict[tuple[str, tuple], float]:
    """/metrics over HTTP -> {(sample name, sorted labels): value}."""
    url = f"http://127.0.0.1:{app.metrics.port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@ON_MODULE_LOOP
async def test_a_known_sequence_gives_exactly_these_metrics(start, redis_server):
    app, stub = await start(redis_url=redis_server.url)
    first = await stub.Translate(pb.TranslateRequest(text=TEXTS[0]))
    again = await stub.Translate(pb.TranslateRequest(text=TEXTS[0]))
    fresh = await stub.Translate(
        pb.TranslateRequest(text=TEXTS[1], options=pb.DecodingOptions(no_cache=True))
    )
    bad_task = await code_of(stub.Generate(pb.GenerateRequest(task="nope", text="안녕")))
    empty = await code_of(stub.Translate(pb.TranslateRequest(text="")))
    assert not first.cached and again.cached and again.text == first.text and not fresh.cached
    assert empty == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_task == grpc.StatusCode.UNIMPLEMENTED  # a task not served, as from Summarize

    m = scrape(app)
    assert value(m, "hanseq_requests_total", task="translate", code="OK") == 3
    assert value(m, "hanseq_requests_total", task="translate", code="INVALID_ARGUMENT") == 1
    assert value(m, "hanseq_requests_total", task="unknown", code="UNIMPLEMENTED") == 1
    assert value(m, "hanseq_request_duration_seconds_count", task="translate") == 4
    assert value(m, "hanseq_cache_lookups_total", layer="local", result="miss") == 1
    assert value(m, "hanseq_cache_lookups_total", layer="local", result="hit") == 1
    assert value(m, "hanseq_cache_lookups_total", layer="redis", result="miss") == 1
    assert value(m, "hanseq_cache_lookups_total", layer="redis", result="hit") == 0
    assert value(m, "hanseq_cache_errors_total") == 0
    assert value(m, "hanseq_batch_size_count", task="translate") == 2  # decoded twice
    assert value(m, "hanseq_queue_wait_seconds_count", task="translate") == 2
    assert value(m, "hanseq_compute_seconds_count", device="cpu", task="translate") == 2
    assert value(m, "hanseq_generated_tokens_total", task="translate") >= 2
    grpc_labels = {"grpc_type": "UNARY", "grpc_service": "hanseq.v1.Seq2Seq"}
    assert value(m, "grpc_server_started_total", grpc_method="Translate", **grpc_labels) == 4
    assert (
        value(
            m, "grpc_server_handled_total", grpc_method="Translate", grpc_code="OK", **grpc_labels
        )
        == 3
    )
    assert (
        value(
            m,
            "grpc_server_handled_total",
            grpc_method="Generate",
            grpc_code="UNIMPLEMENTED",
            **grpc_labels,
        )
        == 1
    )
    assert (
        value(m, "grpc_server_handling_seconds_count", grpc_method="Translate", **grpc_labels) == 4
    )
    assert value(m, "hanseq_workers_alive") == 1 and value(m, "hanseq_workers_busy") == 0
    assert value(m, "hanseq_queue_depth", task="translate") == 0
    info = app.models.tasks["translate"]
    assert (
        value(
            m,
            "hanseq_bundle_info",
            task="translate",
            model_id=info.model_id,
            version=info.model_version,
        )
        == 1
    )
    assert value(m, "process_resident_memory_bytes") > 0


@ON_MODULE_LOOP
async def test_a_second_server_reads_the_first_ones_answers_through_redis(start, redis_server):
    _, one = await start(redis_url=redis_server.url)
    two_app, two = await start(redis_url=redis_server.url)
    decoded = await one.Summarize(pb.SummarizeRequest(text=TEXTS[2]))
    shared = await two.Summarize(pb.SummarizeRequest(text=TEXTS[2]))
    assert not decoded.cached and shared.cached and shared.text == decoded.text
    m = scrape(two_app)
    assert value(m, "hanseq_cache_lookups_total", layer="redis", result="hit") == 1


@ON_MODULE_LOOP
async def test_redis_down_fails_no_request_and_recovery_resumes_hits(start, redis_server):
    one_app, one = await start(redis_url=redis_server.url, cache_breaker_s=0.3)
    _, two = await start(redis_url=redis_server.url, cache_breaker_s=0.3)
    redis_server.stop()
    try:
        replies = await asyncio.gather(
            *(one.Translate(pb.TranslateRequest(text=t)) for t in TEXTS[3:8])
        )
        assert all(r.text and not r.cached for r in replies)
        assert value(scrape(one_app), "hanseq_cache_errors_total") >= 1
    finally:
        redis_server.start()
    await asyncio.sleep(0.4)  # the breaker lets Redis be tried again
    decoded = await one.Translate(pb.TranslateRequest(text=TEXTS[9]))
    shared = await two.Translate(pb.TranslateRequest(text=TEXTS[9]))
    assert not decoded.cached and shared.cached


@ON_MODULE_LOOP
async def test_redis_killed_mid_load_fails_no_request(start, redis_server):
    """Requests in flight while Redis dies (SIGKILL: connections cut, nothing answers) and
    comes back: every one succeeds, and nothing waits on the dead Redis for long."""
    # A generous timeout: a killed Redis refuses connections at once, while a busy machine
    # can take longer than the default 50 ms to connect to a live one, which would count as
    # the failures this test says recovery does not have.
    app, stub = await start(
        redis_url=redis_server.url, cache_breaker_s=0.3, cache_entries=0, redis_timeout_ms=2000
    )
    texts = [line.split("\t")[0] for line in reversal_pairs(120, seed=78)]

    async def one(text: str) -> pb.GenerateResponse:
        return await stub.Translate(pb.TranslateRequest(text=text), timeout=60)

    replies: list[pb.GenerateResponse] = []
    redis_back = asyncio.Event()

    async def caller(first: int) -> None:
        """Keeps one request in flight until after Redis is back: a fixed batch of 120
        requests was once answered in full before the kill landed."""
        i = first
        while not redis_back.is_set():
            replies.append(await one(texts[i % len(texts)]))
            i += 8

    callers = asyncio.gather(*(caller(k) for k in range(8)))
    await asyncio.sleep(0.2)
    redis_server.process.kill()
    redis_server.process.wait(5)
    redis_server.process = None
    # Dead until a lookup has failed on it, however slow a busy machine makes the callers
    # (a fixed pause once ended before any request reached the cache).
    for _ in range(600):
        if value(scrape(app), "hanseq_cache_errors_total") >= 1:
            break
        await asyncio.sleep(0.05)
    redis_server.start()
    await asyncio.sleep(0.2)
    redis_back.set()
    await callers
    assert len(replies) >= 16 and all(r.text for r in replies)
    samples = scrape(app)
    ok = value(samples, "hanseq_requests_total", task="translate", code="OK")
    assert ok >= len(replies)
    errors = value(samples, "hanseq_cache_errors_total")
    assert errors >= 1  # it did die under the load
    # Back: one failure dropped every dead pooled connection, so Redis is not failed again
    # (and the breaker tripped again) once per stale connection.
    for _ in range(4):
        await asyncio.sleep(0.35)
        await asyncio.gather(*(one(t) for t in texts[:30]))
    assert value(scrape(app), "hanseq_cache_errors_total") <= errors + 1


@ON_MODULE_LOOP
async def test_single_flight_identical_requests_share_one_decode(start):
    app, stub = await start()
    slow = pb.DecodingOptions(min_length=60, max_length=64)
    replies = await asyncio.gather(
        *(stub.Respond(pb.RespondRequest(message=TEXTS[10], options=slow)) for _ in range(6))
    )
    assert len({r.text for r in replies}) == 1
    m = scrape(app)
    assert value(m, "hanseq_batch_size_count", task="respond") == 1  # one decode for six


@ON_MODULE_LOOP
async def test_a_new_bundle_version_misses(start, service_bundle_path, tmp_path):
    models = shutil.copytree(service_bundle_path, tmp_path / "b")
    _, stub = await start(models=models, admin_without_auth=True)  # it reloads
    before = await stub.Translate(pb.TranslateRequest(text=TEXTS[11]))
    assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[11]))).cached
    manifest = json.loads((models / "bundle.json").read_text())
    manifest["version"] = "cache-2"
    (models / "bundle.json").write_text(json.dumps(manifest))
    await stub.ReloadModels(pb.ReloadModelsRequest())
    after = await stub.Translate(pb.TranslateRequest(text=TEXTS[11]))
    assert (
        after.model_version == "cache-2" and not after.cached and before.model_version != "cache-2"
    )


@ON_MODULE_LOOP
async def test_a_cached_value_that_does_not_verify_is_never_served(start, redis_server):
    """A shared Redis may hold garbage or another bundle's answer under our key (a
    misconfigured prefix, an attacker with Redis access): it is decoded afresh instead."""
    app, stub = await start(redis_url=redis_server.url, cache_entries=0)
    model = app.models.tasks["translate"]
    options = app.servicer._options(pb.DecodingOptions(), model)
    client = redis.Redis.from_url(redis_server.url)
    truth = await stub.Translate(pb.TranslateRequest(text=TEXTS[5], options=FRESH))
    foreign = pb.GenerateResponse(text="planted", model_id="other", model_version="1")
    for planted in (b"\xff\x00 not a protobuf", foreign.SerializeToString()):
        key = "hanseq:" + cache_key(model, "translate", TEXTS[5], options)
        await client.set(key, planted)
        reply = await stub.Translate(pb.TranslateRequest(text=TEXTS[5]))
        assert reply.text == truth.text and not reply.cached
    await client.aclose()
    assert value(scrape(app), "hanseq_cache_lookups_total", layer="any", result="invalid") == 2


@ON_MODULE_LOOP
async def test_redis_with_a_password(start, tmp_path, caplog):
    secret = "s3cret-redis-password"
    guarded = RedisServer(tmp_path, password=secret)
    guarded.start()
    try:
        app, stub = await start(redis_url=guarded.url, redis_password=secret, cache_entries=0)
        await stub.Translate(pb.TranslateRequest(text=TEXTS[6]))
        assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[6]))).cached
        assert value(scrape(app), "hanseq_cache_errors_total") == 0
        in_url = guarded.url.replace("redis://", f"redis://:{secret}@")
        app, stub = await start(redis_url=in_url, cache_entries=0)
        assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[6]))).cached
        wrong = guarded.url.replace("redis://", "redis://:wrong-password@")
        app, stub = await start(redis_url=wrong, cache_entries=0)
        assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[6]))).text  # uncached
        assert value(scrape(app), "hanseq_cache_errors_total") >= 1
        assert "wrong-password" not in caplog.text and "redis://:***@" in caplog.text
    finally:
        guarded.stop()


def test_urls_are_logged_without_their_password():
    assert redacted("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("rediss://:pw@host/0") == "rediss://:***@host/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
