"""The gRPC service end to end: a real server on a free port, real worker processes, the tiny
three-head bundle trained by the tests, and grpc.aio clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.exposition import generate_latest

from hanseq.engine.bundle import load_bundle
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.service.server import create_app
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from hanseq_client import AsyncClient
from tests.conftest import reversal_pairs, settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")
TEXTS = [line.split("\t")[0] for line in reversal_pairs(60, seed=31)]
CODE = grpc.StatusCode


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(service_bundle_path, tmp_path_factory):
    """A copy of the bundle (so reload tests may edit its version) behind a running server."""
    models = shutil.copytree(service_bundle_path, tmp_path_factory.mktemp("models") / "b")
    app = await create_app(settings_for(models, admin_without_auth=True))  # reload tests
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, hanseq_pb2_grpc.Seq2SeqStub(channel), channel, models
    await channel.close()
    await app.stop()


@pytest.fixture(scope="module")
def offline(service_bundle_path):
    return Pipeline.from_bundle(load_bundle(service_bundle_path))


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    return CODE.OK, ""


async def test_every_unary_rpc(served, offline):
    _, stub, _, _ = served
    text = TEXTS[0]
    expect = offline.generate("translate", [text])[0].text
    first = await stub.Translate(pb.TranslateRequest(text=text))
    assert first.text == expect and not first.cached
    assert first.compute_ms > 0 and first.queue_ms >= 0 and first.batch_size >= 1
    assert (await stub.Summarize(pb.SummarizeRequest(text=text))).text == offline.generate(
        "summarize", [text]
    )[0].text
    respond = await stub.Respond(
        pb.RespondRequest(
            message=text, history=[pb.Turn(text="안녕", from_user=True), pb.Turn(text="네")]
        )
    )
    assert respond.text == offline.generate("respond", [text])[0].text  # context_turns = 0
    generic = await stub.Generate(pb.GenerateRequest(task="translate", text=text))
    assert generic.text == expect and generic.model_id == "service-toy"
    assert generic.cached and generic.compute_ms == 0  # the same question as ``first``


async def test_batch_keeps_order_and_matches_the_engine(served, offline):
    _, stub, _, _ = served
    options = pb.DecodingOptions(beam_size=3, n_best=2, length_penalty=0.6)
    reply = await stub.GenerateBatch(
        pb.GenerateBatchRequest(task="summarize", texts=TEXTS[:20], options=options)
    )
    expected = offline.generate(
        "summarize",
        TEXTS[:20],
        SearchOptions(beam_size=3, n_best=2, length_penalty=0.6, max_length=20),
    )
    assert [r.text for r in reply.results] == [e.text for e in expected]
    assert [r.alternatives[0].text for r in reply.results] == [
        e.alternatives[0][0] for e in expected
    ]


async def test_attention_comes_back_when_asked(served):
    _, stub, _, _ = served
    r = await stub.Translate(
        pb.TranslateRequest(
            text="사과 바다 하늘", options=pb.DecodingOptions(return_attention=True)
        )
    )
    assert list(r.source_tokens) == ["▁사과", "▁바다", "▁하늘"]
    assert r.attention.rows == len(r.target_tokens) + 1 and r.attention.cols == 4
    assert len(r.attention.weights) == r.attention.rows * r.attention.cols
    plain = await stub.Translate(pb.TranslateRequest(text="사과 바다 하늘"))
    assert not plain.target_tokens and not plain.attention.weights


async def test_stream_grows_to_the_final_result(served, offline):
    _, stub, _, _ = served
    request = pb.GenerateRequest(
        task="respond", text=TEXTS[1], options=pb.DecodingOptions(sample=True, seed=5, top_k=4)
    )
    messages = [m async for m in stub.GenerateStream(request)]
    assert messages[-1].final and not any(m.final for m in messages[:-1])
    final = messages[-1].result
    expected = offline.generate(
        "respond", [TEXTS[1]], SearchOptions(sampling=True, seed=5, top_k=4, max_length=20)
    )
    assert final.text == expected[0].text == messages[-1].text
    assert all(b.text.startswith(a.text) for a, b in zip(messages, messages[1:], strict=False))
    assert len(messages) >= 3
    assert "".join(m.delta for m in messages) == final.text  # the deltas add up


async def test_list_models_shows_tasks_versions_and_limits(served):
    app, stub, _, _ = served
    reply = await stub.ListModels(pb.ListModelsRequest())
    assert [t.task for t in reply.tasks] == ["translate", "respond", "summarize"]
    assert all(t.model_version == app.models.tasks[t.task].model_version for t in reply.tasks)
    assert reply.tasks[0].metric == "bleu" and "bleu" in reply.tasks[0].valid_scores
    assert reply.tasks[1].metric == "rouge_l" and "rouge_l" in reply.tasks[1].valid_scores
    assert reply.limits.max_beam_size == 8 and reply.limits.max_input_chars == 2000
    assert {t.max_source_tokens for t in reply.tasks} == {19}  # data.max_source_length 20


async def test_health_per_task_and_reflection(served):
    _, _, channel, _ = served
    health = health_pb2_grpc.HealthStub(channel)
    for name in [
        "",
        "hanseq.v1.Seq2Seq",
        "hanseq.v1.Seq2Seq/translate",
        "hanseq.v1.Seq2Seq/summarize",
    ]:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, _ = await code_of(health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert code == CODE.NOT_FOUND
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "hanseq.v1.Seq2Seq" in names


def _opts(**kw):
    return pb.DecodingOptions(**kw)


BAD = [
    ("Translate", pb.TranslateRequest(text=""), "text: must not be empty"),
    ("Translate", pb.TranslateRequest(text="  \n"), "text: must not be empty"),
    (
        "Translate",
        pb.TranslateRequest(text="가" * 2001),
        "text: is 2001 characters; the limit is 2000",
    ),
    ("Generate", pb.GenerateRequest(text="x"), "task: must name a task"),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(beam_size=0)),
        "options.beam_size: must be between 1 and 8 (got 0)",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(beam_size=9)),
        "options.beam_size: must be between 1 and 8",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(beam_size=2, n_best=3)),
        "options.n_best: must be between 1 and 2",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(max_length=999)),
        "options.max_length: must be between 1 and 256",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(max_length=5, min_length=5)),
        "options.min_length: must be between 0 and 4",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(length_penalty=float("nan"))),
        "options.length_penalty",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(sample=True, beam_size=4)),
        "options.sample: sampling decodes one hypothesis",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(top_p=0.5)),
        "options.top_p: applies only with sample=true",
    ),
    (
        "Translate",
        pb.TranslateRequest(text="x", options=_opts(sample=True, temperature=0)),
        "options.temperature: must be between",
    ),
    ("GenerateBatch", pb.GenerateBatchRequest(task="translate"), "texts: must hold at least one"),
    (
        "GenerateBatch",
        pb.GenerateBatchRequest(task="translate", texts=["x"] * 257),
        "texts: 257 items; the limit is 256",
    ),
    (
        "Respond",
        pb.RespondRequest(message="x", history=[pb.Turn(text="")]),
        "history[0].text: must not be empty",
    ),
    (
        "Respond",
        pb.RespondRequest(message="x", history=[pb.Turn(text="a")] * 33),
        "history: 33 turns; the limit is 32",
    ),
]


@pytest.mark.parametrize("method, request_, message", BAD, ids=[b[2][:40] for b in BAD])
async def test_bad_input_is_invalid_argument_naming_the_field(served, method, request_, message):
    _, stub, _, _ = served
    code, details = await code_of(getattr(stub, method)(request_))
    assert code == CODE.INVALID_ARGUMENT and details.startswith(message), details


@pytest.mark.parametrize(
    "method, request_",
    [
        ("Generate", pb.GenerateRequest(task="poetry", text="x")),
        ("GenerateBatch", pb.GenerateBatchRequest(task="poetry", texts=["x"])),
    ],
)
async def test_a_task_not_served_is_unimplemented_in_every_rpc(served, method, request_):
    """One rule: a task the bundles lack is UNIMPLEMENTED, named by the RPC or the request."""
    _, stub, _, _ = served
    code, details = await code_of(getattr(stub, method)(request_))
    assert code == CODE.UNIMPLEMENTED, (code, details)
    assert details == "task 'poetry' is not served here; served: translate, respond, summarize"
    stream = stub.GenerateStream(pb.GenerateRequest(task="poetry", text="x"))
    code, details = await code_of(_drain(stream))
    assert code == CODE.UNIMPLEMENTED and details.startswith("task 'poetry' is not served")


async def _drain(stream) -> None:
    async for _ in stream:
        pass


async def test_streaming_refuses_beam_search(served):
    _, stub, _, _ = served
    call = stub.GenerateStream(
        pb.GenerateRequest(task="translate", text="x", options=_opts(beam_size=3))
    )
    code, details = await code_of(_drain(call))
    assert code == CODE.INVALID_ARGUMENT and "streaming decodes greedily" in details


async def _drain(call):
    return [m async for m in call]


async def test_a_short_deadline_is_deadline_exceeded(served):
    _, stub, _, _ = served
    slow = _opts(beam_size=8, min_length=250, max_length=256)
    code, _ = await code_of(
        stub.Translate(pb.TranslateRequest(text=TEXTS[2], options=slow), timeout=0.05)
    )
    assert code == CODE.DEADLINE_EXCEEDED
    ok = await stub.Translate(pb.TranslateRequest(text=TEXTS[2]), timeout=30)  # still serving
    assert ok.text


async def test_a_cancelled_stream_stops_decoding(served):
    app, stub, _, _ = served
    seen = []
    (model,) = app.models.served.values()
    original = model.batcher.submit
    model.batcher.submit = lambda request: (seen.append(request), original(request))[1]
    try:
        call = stub.GenerateStream(
            pb.GenerateRequest(
                task="respond", text=TEXTS[3], options=_opts(min_length=250, max_length=256)
            )
        )
        async for _ in call:
            call.cancel()  # leave after the first partial output
            break
    finally:
        model.batcher.submit = original
    for _ in range(200):  # the worker frees up once the row has left the batch
        if app.models.busy_count() == 0:
            break
        await asyncio.sleep(0.01)
    assert seen[0].cancelled and seen[0].partials < 100  # 250 steps had it not stopped


async def test_200_concurrent_mixed_requests_equal_the_engine(served, offline):
    _, stub, _, _ = served
    variants = [
        ("translate", {}),
        ("respond", {"beam_size": 3}),
        ("summarize", {"no_repeat_ngram": 2}),
        ("respond", {"sample": True, "seed": 9}),
    ]
    calls, expected = [], []
    for i in range(200):
        task, kw = variants[i % len(variants)]
        text = TEXTS[i % len(TEXTS)]
        calls.append(stub.Generate(pb.GenerateRequest(task=task, text=text, options=_opts(**kw))))
        engine_kw = {("sampling" if k == "sample" else k): v for k, v in kw.items()}
        expected.append((task, text, SearchOptions(max_length=20, **engine_kw)))
    replies = await asyncio.gather(*calls)
    for reply, (task, text, options) in zip(replies, expected, strict=True):
        assert reply.text == offline.generate(task, [text], options)[0].text
    assert max(r.batch_size for r in replies) > 1  # they really were batched


async def test_reload_under_load_loses_nothing_and_switches_version(served):
    app, stub, _, models = served
    manifest = json.loads((models / "bundle.json").read_text())
    manifest["version"] = "reloaded-2"
    (models / "bundle.json").write_text(json.dumps(manifest))
    load = [stub.Translate(pb.TranslateRequest(text=TEXTS[i % 60])) for i in range(150)]
    load_task = asyncio.gather(*load)
    await asyncio.sleep(0.05)
    await stub.ReloadModels(pb.ReloadModelsRequest())
    replies = await load_task
    assert len(replies) == 150 and all(r.text for r in replies)
    after = await stub.Translate(pb.TranslateRequest(text=TEXTS[0]))
    assert after.model_version == "reloaded-2"
    listed = await stub.ListModels(pb.ListModelsRequest())
    assert {t.model_version for t in listed.tasks} == {"reloaded-2"}
    assert app.models.alive_count() == 1


async def test_flood_beyond_the_queue_is_resource_exhausted_and_recovers(service_bundle_path):
    app = await create_app(settings_for(service_bundle_path, max_queue_size=4, max_batch_size=2))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    try:
        slow = _opts(min_length=120, max_length=128)
        started = time.monotonic()
        calls = [
            stub.Translate(pb.TranslateRequest(text=TEXTS[i % 60], options=slow)) for i in range(40)
        ]
        results = await asyncio.gather(*(code_of(c) for c in calls))
        codes = [c for c, _ in results]
        assert codes.count(CODE.RESOURCE_EXHAUSTED) >= 20 and CODE.OK in codes
        assert set(codes) <= {CODE.OK, CODE.RESOURCE_EXHAUSTED}
        refused = next(i for i, (c, _) in enumerate(results) if c == CODE.RESOURCE_EXHAUSTED)
        assert (
            "queue is full" in results[refused][1] and "retry after 500 ms" in results[refused][1]
        )
        # The pause gRPC's retry policy takes instead of its backoff, and the id for the logs.
        trailers = dict(await calls[refused].trailing_metadata())
        assert trailers["grpc-retry-pushback-ms"] == "500" and trailers["x-request-id"]
        assert time.monotonic() - started < 60
        ok = await stub.Translate(pb.TranslateRequest(text=TEXTS[0]))  # recovered
        assert ok.text

        # A worker killed mid-batch: its requests fail UNAVAILABLE; a new one takes over.
        slow = _opts(min_length=120, max_length=128, no_cache=True)  # decoded, not recalled
        calls = [
            asyncio.ensure_future(
                code_of(stub.Translate(pb.TranslateRequest(text=TEXTS[i], options=slow)))
            )
            for i in range(2)
        ]
        for _ in range(500):
            if app.models.busy_count():
                break
            await asyncio.sleep(0.01)
        os.kill(app.models.workers()[0].pid, signal.SIGKILL)
        codes = {c for c, _ in await asyncio.gather(*calls)}
        assert codes <= {CODE.UNAVAILABLE, CODE.OK} and CODE.UNAVAILABLE in codes
        fresh = _opts(no_cache=True)  # decoded by the new worker, not recalled
        ok = await stub.Translate(pb.TranslateRequest(text=TEXTS[0], options=fresh), timeout=120)
        assert ok.text and not ok.cached
        # The death is counted, the new worker's memory is exported, no _created series.
        scraped = generate_latest(app.metrics.registry).decode()
        assert 'hanseq_worker_restarts_total{device="cpu"} 1.0' in scraped
        rss = re.search(
            r'hanseq_worker_resident_memory_bytes\{device="cpu",worker="0"\} (\S+)', scraped
        )
        assert rss and float(rss.group(1)) > 50e6, scraped  # a worker holds torch and a model
        assert 'hanseq_compute_seconds_count{device="cpu",task="translate"}' in scraped
        assert "_created" not in scraped
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        async with AsyncClient(f"127.0.0.1:{app.port}") as client:  # what the client sees
            assert await client.health("translate") == "SERVING"
            await app.lifecycle.drain()
            assert await client.health() == await client.health("translate") == "NOT_SERVING"
            live = await health.Check(health_pb2.HealthCheckRequest(service="hanseq.liveness"))
            assert live.status == health_pb2.HealthCheckResponse.SERVING  # no liveness kill
        await app.stop()  # draining: NOT_SERVING, then nothing is accepted
        code, _ = await code_of(stub.Translate(pb.TranslateRequest(text=TEXTS[0])))
        assert code == CODE.UNAVAILABLE
        code, _ = await code_of(stub.ListModels(pb.ListModelsRequest()))
        assert code == CODE.UNAVAILABLE
    finally:
        await channel.close()
        await app.stop()


async def test_batch_items_fail_alone_and_the_call_only_for_itself(served, offline):
    app, stub, _, _ = served
    limit = app.settings.max_input_chars
    texts = [TEXTS[0], "", TEXTS[1], "가" * (limit + 1), TEXTS[2]]
    reply = await stub.GenerateBatch(pb.GenerateBatchRequest(task="translate", texts=texts))
    assert [i.WhichOneof("outcome") for i in reply.items] == [
        "result", "error", "result", "error", "result",
    ]  # fmt: skip
    expected = offline.generate("translate", [TEXTS[0], TEXTS[1], TEXTS[2]])
    assert [reply.items[i].result.text for i in (0, 2, 4)] == [g.text for g in expected]
    empty, long = reply.items[1].error, reply.items[3].error
    assert (empty.code, empty.code_name) == (CODE.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT")
    assert empty.message == "texts[1]: must not be empty"
    assert long.message == f"texts[3]: is {limit + 1} characters; the limit is {limit}"
    assert not reply.results  # the old field: filled only when every item succeeded
    whole = await stub.GenerateBatch(pb.GenerateBatchRequest(task="translate", texts=TEXTS[:3]))
    assert [r.text for r in whole.results] == [i.result.text for i in whole.items]
    # What concerns the call whole still fails it.
    code, _ = await code_of(
        stub.GenerateBatch(
            pb.GenerateBatchRequest(task="translate", texts=["x"], options=_opts(beam_size=99))
        )
    )
    assert code == CODE.INVALID_ARGUMENT


async def test_a_queue_that_fills_part_way_refuses_only_the_items_past_it(service_bundle_path):
    app = await create_app(settings_for(service_bundle_path, max_queue_size=4, max_batch_size=2))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    try:
        slow = _opts(min_length=60, max_length=64, no_cache=True)
        batch = pb.GenerateBatchRequest(task="translate", texts=TEXTS[:20], options=slow)
        items = (await stub.GenerateBatch(batch)).items
        outcomes = [i.error.code_name if i.HasField("error") else "OK" for i in items]
        assert len(items) == 20 and set(outcomes) == {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        refused = next(i.error for i in items if i.HasField("error"))
        assert refused.retry_after_ms == 500 and "queue is full" in refused.message
        counted = app.metrics.batch_items.labels("translate", "RESOURCE_EXHAUSTED")._value.get()
        assert counted == outcomes.count("RESOURCE_EXHAUSTED")
    finally:
        await channel.close()
        await app.stop()


async def test_inputs_over_max_input_tokens_are_refused_by_name(service_bundle_path):
    app = await create_app(settings_for(service_bundle_path, max_input_tokens=3))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    long, short = "사과 바다 하늘 학교", "사과 바다"  # four morphemes, and two
    try:
        assert (await stub.Translate(pb.TranslateRequest(text=short))).text
        for call, named in [
            (stub.Translate(pb.TranslateRequest(text=long)), "text"),
            (stub.Translate(pb.TranslateRequest(text=long, options=_opts(beam_size=3))), "text"),
            (stub.Respond(pb.RespondRequest(message=long)), "message"),
        ]:
            assert await code_of(call) == (
                CODE.INVALID_ARGUMENT,
                f"{named}: is 4 tokens; the limit is 3",
            )
        batch = pb.GenerateBatchRequest(task="summarize", texts=[short, long])
        first, second = (await stub.GenerateBatch(batch)).items  # each input answered alone
        assert first.result.text and second.error.code_name == "INVALID_ARGUMENT"
        assert second.error.message == "texts[1]: is 4 tokens; the limit is 3"
        stream = stub.GenerateStream(pb.GenerateRequest(task="translate", text=long))
        assert await code_of(_drain(stream)) == (
            CODE.INVALID_ARGUMENT,
            "text: is 4 tokens; the limit is 3",
        )
        assert (
            await stub.Translate(pb.TranslateRequest(text=short, options=_opts(no_cache=True)))
        ).text
    finally:
        await channel.close()
        await app.stop()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


async def test_aged_connections_are_closed_without_failing_calls(service_bundle_path):
    """max_connection_age_s: the server ends old connections (so clients re-resolve DNS and
    reach new pods); the client reconnects and no call fails."""
    app = await create_app(settings_for(service_bundle_path, max_connection_age_s=0.5))
    try:
        async with AsyncClient(f"127.0.0.1:{app.port}", timeout=20) as client:
            started = time.monotonic()
            while time.monotonic() - started < 2.5:
                assert (await client.translate(TEXTS[0])).text
                await asyncio.sleep(0.05)
    finally:
        await app.stop()


async def test_a_reload_of_a_damaged_bundle_is_refused_and_the_old_one_serves(
    service_bundle_path, tmp_path
):
    models = shutil.copytree(service_bundle_path, tmp_path / "b")
    app = await create_app(settings_for(models, admin_without_auth=True))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    try:
        before = await stub.Translate(pb.TranslateRequest(text=TEXTS[0]))
        weights = models / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit of one weight
        weights.write_bytes(bytes(data))
        code, message = await code_of(stub.ReloadModels(pb.ReloadModelsRequest()))
        assert code == CODE.FAILED_PRECONDITION and "previous models still serve" in message
        assert "weights.safetensors" in message
        after = await stub.Translate(
            pb.TranslateRequest(text=TEXTS[0], options=_opts(no_cache=True))
        )
        assert after.text == before.text and after.model_version == before.model_version
    finally:
        await channel.close()
        await app.stop()
