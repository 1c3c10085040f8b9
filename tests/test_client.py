"""hanseq_client against a real `hanseq serve` on a free port: every method of both clients,
the mapping of every status code, retries and recovery.

Status codes the real server never sends (UNAUTHENTICATED before #8, DATA_LOSS, ...) and exact
retry counts come from ``ScriptedServer``: a real gRPC server on a free port whose handler the
test scripts, so the client is exercised over the wire exactly as against hanseq.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent import futures

import grpc
import psutil
import pytest

import hanseq_client
from hanseq.engine.bundle import load_bundle
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.v1 import hanseq_pb2 as pb
from hanseq_client import NO_RETRY, TLS, AsyncClient, Client, Retry, Turn
from hanseq_client import errors as E
from tests.conftest import HanseqServer, free_port, make_certificates, reversal_pairs

TEXTS = [line.split("\t")[0] for line in reversal_pairs(40, seed=57)]


@pytest.fixture(scope="module")
def offline(service_bundle_path):
    return Pipeline.from_bundle(load_bundle(service_bundle_path))


@pytest.fixture(scope="module")
def client(hanseq_server):
    with Client(hanseq_server.target, timeout=60) as c:
        yield c


def test_public_surface_is_deliberate():
    assert sorted(hanseq_client.__all__) == sorted(
        ["AsyncClient", "Client", "Retry", "NO_RETRY", "TLS", "Turn", "DecodingOptions"]
        + ["Result", "Alternative", "Attention", "Timings", "StreamUpdate", "Models"]
        + [
            "ModelInfo",
            "ServedModel",
            "Limits",
            "HanseqError",
            "InvalidInput",
            "Unsupported",
            "Overloaded",
        ]
        + ["Unavailable", "DeadlineExceeded", "Unauthenticated", "PermissionDenied"]
        + ["Cancelled", "ServerError", "FailedPrecondition", "__version__"]
    )
    assert all(hasattr(hanseq_client, name) for name in hanseq_client.__all__)
    for name in ["InvalidInput", "Overloaded", "Unavailable", "DeadlineExceeded", "ServerError"]:
        assert issubclass(getattr(hanseq_client, name), hanseq_client.HanseqError)


# -- every method, sync ----------------------------------------------------------------------


def test_sync_task_methods_match_the_engine(client, offline):
    text = TEXTS[0]
    first = client.translate(text, no_cache=True)
    assert first.text == offline.generate("translate", [text])[0].text
    assert not first.cached and first.model_id == "service-toy" and first.model_version
    assert first.timings.compute_ms > 0 and first.timings.total_ms >= first.timings.compute_ms
    assert first.timings.batch_size >= 1 and not first.truncated and first.attention is None
    client.translate(text)  # stored in the server's cache (no_cache above stored nothing)
    assert client.translate(text).cached
    assert client.summarize(text).text == offline.generate("summarize", [text])[0].text
    reply = client.respond(text, [Turn("안녕", True), ("네, 안녕하세요", False)])
    assert reply.text == offline.generate("respond", [text])[0].text  # context_turns = 0
    assert client.generate("translate", text).text == first.text


def test_sync_decoding_options_reach_the_server(client, offline):
    text = TEXTS[1]
    result = client.summarize(text, beam_size=3, n_best=2, length_penalty=0.6)
    expected = offline.generate(
        "summarize", [text], SearchOptions(beam_size=3, n_best=2, length_penalty=0.6, max_length=20)
    )[0]
    assert result.text == expected.text
    assert [a.text for a in result.alternatives] == [expected.alternatives[0][0]]
    assert result.score == pytest.approx(expected.score, abs=1e-4)


def test_sync_attention_is_a_matrix_with_token_labels(client):
    result = client.translate("사과 바다 하늘", return_attention=True)
    att = result.attention
    assert att is not None and att.source_tokens == ["▁사과", "▁바다", "▁하늘", "</s>"]
    assert len(att.weights) == len(att.target_tokens) and att.target_tokens[-1] == "</s>"
    assert all(len(row) == 4 and sum(row) == pytest.approx(1, abs=1e-3) for row in att.weights)


def test_sync_batch_keeps_order(client, offline):
    results = client.batch("translate", TEXTS[:12])
    assert [r.text for r in results] == [o.text for o in offline.generate("translate", TEXTS[:12])]
    assert client.batch("translate", []) == []


def test_batch_items_give_each_input_its_result_or_its_error(client, offline):
    texts = [TEXTS[0], " ", TEXTS[1]]
    first, blank, last = client.batch_items("translate", texts)
    expected = offline.generate("translate", [TEXTS[0], TEXTS[1]])
    assert isinstance(first, hanseq_client.Result) and first.text == expected[0].text
    assert isinstance(last, hanseq_client.Result) and last.text == expected[1].text
    assert isinstance(blank, E.InvalidInput) and blank.message == "texts[1]: must not be empty"
    with pytest.raises(E.InvalidInput, match=r"texts\[1\]: must not be empty"):
        client.batch("translate", texts)  # batch() raises the first failed input's error


def test_sync_stream_grows_to_the_final_result(client, offline):
    updates = list(client.stream("respond", TEXTS[2], sample=True, seed=5, top_k=4))
    assert updates[-1].final and not any(u.final for u in updates[:-1])
    expected = offline.generate(
        "respond", [TEXTS[2]], SearchOptions(sampling=True, seed=5, top_k=4, max_length=20)
    )[0]
    assert updates[-1].result is not None and updates[-1].result.text == expected.text
    assert all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:], strict=False))
    assert "".join(u.delta for u in updates) == expected.text


def test_sync_stream_left_early_is_cancelled(client):
    stream = client.stream("translate", TEXTS[3], min_length=15, max_length=20, no_cache=True)
    first = next(stream)
    assert not first.final
    stream.close()  # leaves the loop: the call is cancelled, the client stays usable
    assert client.translate(TEXTS[3]).text


def test_sync_models_and_reload(client):
    models = client.models()
    assert [t.task for t in models.tasks] == ["translate", "respond", "summarize"]
    assert models.limits.max_beam_size == 8 and models.limits.max_batch_items == 256
    assert all(t.metric and t.model_id == "service-toy" for t in models.tasks)
    reloaded = client.reload()
    assert [t.task for t in reloaded] == ["translate", "respond", "summarize"]
    assert client.translate(TEXTS[0]).text


def test_sync_client_is_thread_safe(client, offline):
    expected = [o.text for o in offline.generate("translate", TEXTS[:16])]
    with futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: client.translate(t, no_cache=True).text, TEXTS[:16]))
    assert got == expected


# -- every method, async ---------------------------------------------------------------------


async def test_async_methods_match_the_sync_ones(hanseq_server, client):
    text = TEXTS[4]
    async with AsyncClient(hanseq_server.target, timeout=60) as aclient:
        results = await asyncio.gather(
            aclient.translate(text),
            aclient.respond(text, [Turn("안녕", True)]),
            aclient.summarize(text, beam_size=2),
            aclient.generate("summarize", text),
        )
        assert [r.text for r in results] == [
            client.translate(text).text,
            client.respond(text).text,
            client.summarize(text, beam_size=2).text,
            client.generate("summarize", text).text,
        ]
        batch = await aclient.batch("respond", TEXTS[:5])
        assert [r.text for r in batch] == [r.text for r in client.batch("respond", TEXTS[:5])]
        items = await aclient.batch_items("respond", [TEXTS[0], ""])
        assert isinstance(items[0], hanseq_client.Result) and items[0].text == batch[0].text
        assert isinstance(items[1], E.InvalidInput)
        updates = [u async for u in aclient.stream("translate", text, no_cache=True)]
        assert updates[-1].final and updates[-1].result.text == results[0].text
        assert [t.task for t in (await aclient.models()).tasks] == [
            "translate", "respond", "summarize",
        ]  # fmt: skip
        assert len(await aclient.reload()) == 3
        with pytest.raises(E.InvalidInput, match="text: must not be empty"):
            await aclient.translate("")


# -- errors ----------------------------------------------------------------------------------


def test_server_refusals_name_the_field(client):
    with pytest.raises(E.InvalidInput, match="text: must not be empty") as caught:
        client.translate("")
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.request_id
    with pytest.raises(E.InvalidInput, match="beam_size"):
        client.translate(TEXTS[0], beam_size=99)
    with pytest.raises(E.Unsupported, match="task 'poetry' is not served here"):
        client.generate("poetry", TEXTS[0])  # as translate() against a server without it
    with pytest.raises(E.DeadlineExceeded):
        client.translate(TEXTS[5], timeout=0.001, no_cache=True, min_length=15)
    assert client.translate(TEXTS[5]).text  # and the server serves on


def test_client_side_mistakes_fail_before_sending(client):
    with pytest.raises(E.InvalidInput, match="unknown decoding option beam; valid: beam_size"):
        client.translate(TEXTS[0], beam=4)
    with pytest.raises(E.InvalidInput, match="options.beam_size: -1"):
        client.translate(TEXTS[0], beam_size=-1)
    with pytest.raises(E.InvalidInput, match="text: must be a str, not int"):
        client.translate(3)
    with pytest.raises(E.InvalidInput, match="texts: must be a list of str, not one str"):
        client.batch("translate", "사과 바다")
    with pytest.raises(E.InvalidInput, match=r"history\[0\]: must be a Turn"):
        client.respond(TEXTS[0], ["안녕"])


def test_nobody_listening_is_unavailable_after_retries():
    nobody = f"127.0.0.1:{free_port()}"
    client = Client(nobody, timeout=20, retry=Retry(initial_backoff=0.05))
    with client, pytest.raises(E.Unavailable) as caught:
        client.models()
    assert caught.value.retryable and caught.value.code == "UNAVAILABLE"


class ScriptedServer:
    """A real gRPC server for the hanseq service whose every answer ``script(n)`` decides:
    ``None`` = a normal reply, else ``(code, message, trailers)``; ``n`` counts calls."""

    def __init__(self, script, credentials: grpc.ServerCredentials | None = None, port: int = 0):
        self.script, self.calls, self.times, self.metadata = script, 0, [], []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {
            "Translate": grpc.unary_unary_rpc_method_handler(
                self._translate,
                pb.TranslateRequest.FromString,
                pb.GenerateResponse.SerializeToString,
            ),
            "GenerateStream": grpc.unary_stream_rpc_method_handler(
                self._stream,
                pb.GenerateRequest.FromString,
                pb.GenerateStreamResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("hanseq.v1.Seq2Seq", handlers),)
        )
        if credentials is None:
            port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def _translate(self, request, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        self.times.append(time.monotonic())
        outcome = self.script(self.calls)
        if outcome is None:
            return pb.GenerateResponse(text=f"echo {request.text}", model_id="scripted")
        code, message, trailers = outcome
        context.set_trailing_metadata((("x-request-id", "rid-7"), *trailers))
        context.abort(code, message)

    def _stream(self, request, context):
        """Five growing prefixes and a final message; ``script(n)`` may cut it after k."""
        self.calls += 1
        cut = self.script(self.calls)
        words = ["one", "two", "three", "four", "five"]
        for k in range(1, 6):
            if cut is not None and k > cut:
                context.abort(grpc.StatusCode.UNAVAILABLE, "worker died")
            yield pb.GenerateStreamResponse(text=" ".join(words[:k]))
        final = pb.GenerateResponse(text=" ".join(words))
        yield pb.GenerateStreamResponse(text=final.text, final=True, result=final)

    def stop(self):
        self.server.stop(None)


MAPPING = {
    "INVALID_ARGUMENT": E.InvalidInput,
    "OUT_OF_RANGE": E.InvalidInput,
    "FAILED_PRECONDITION": E.FailedPrecondition,
    "NOT_FOUND": E.InvalidInput,
    "UNIMPLEMENTED": E.Unsupported,
    "RESOURCE_EXHAUSTED": E.Overloaded,
    "UNAVAILABLE": E.Unavailable,
    "DEADLINE_EXCEEDED": E.DeadlineExceeded,
    "UNAUTHENTICATED": E.Unauthenticated,
    "PERMISSION_DENIED": E.PermissionDenied,
    "CANCELLED": E.Cancelled,
    "INTERNAL": E.ServerError,
    "UNKNOWN": E.ServerError,
    "DATA_LOSS": E.ServerError,
    "ABORTED": E.HanseqError,
    "ALREADY_EXISTS": E.HanseqError,
}


def test_every_status_code_has_a_class():
    assert set(MAPPING) == {c.name for c in grpc.StatusCode} - {"OK"}


@pytest.mark.parametrize("code", sorted(MAPPING))
async def test_status_code_becomes_its_exception(code):
    status = grpc.StatusCode[code]
    trailers = (("grpc-retry-pushback-ms", "1500"),) if code == "RESOURCE_EXHAUSTED" else ()
    server = ScriptedServer(lambda n: (status, f"scripted {code}", trailers))
    try:
        for call in (_sync_translate, _async_translate):
            with pytest.raises(MAPPING[code]) as caught:
                await call(server.target)
            error = caught.value
            assert type(error) is MAPPING[code] and not isinstance(error, grpc.RpcError)
            assert error.code == code and error.message == f"scripted {code}"
            assert error.request_id == "rid-7" and str(error) == f"{code}: scripted {code}"
            if code == "RESOURCE_EXHAUSTED":
                assert error.retry_after == 1.5
    finally:
        server.stop()


def test_a_new_client_reaches_a_restarted_server_at_once():
    """A server restarted on the same address (a redeploy, or the OS handing a stopped server's
    port to the next) is reached by a client made after it, on its first call and without
    retries: with gRPC's process-wide connection pool such a client inherited the old
    connection's reconnect backoff and failed at once with UNAVAILABLE, "connection refused"
    (most rounds here, before the fix). Each call has an event loop of its own, as each
    test has (a loop-less sync client, then an asyncio one)."""
    script = lambda n: (grpc.StatusCode.DATA_LOSS, "scripted", ())  # noqa: E731
    server = ScriptedServer(script)
    port = int(server.target.rsplit(":", 1)[1])
    try:
        for _ in range(20):
            for call in (_sync_translate, _async_translate):
                with pytest.raises(E.ServerError, match="DATA_LOSS"):  # not UNAVAILABLE
                    asyncio.run(call(server.target))
            server.stop()
            server = ScriptedServer(script, port=port)
    finally:
        server.stop()


async def _sync_translate(target):
    with Client(target, retry=NO_RETRY, timeout=10) as c:
        c.translate("사과")


async def _async_translate(target):
    async with AsyncClient(target, retry=NO_RETRY, timeout=10) as c:
        await c.translate("사과")


# -- TLS and the token ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_mutual_tls_and_the_token(certificates):
    pem = {p.name: p.read_bytes() for p in certificates.glob("*.*")}
    credentials = grpc.ssl_server_credentials(
        [(pem["server.key"], pem["server.pem"])], pem["ca.pem"], require_client_auth=True
    )
    server = ScriptedServer(lambda n: None, credentials)
    mutual = TLS(
        root_certificates=certificates / "ca.pem",  # a path
        certificate_chain=pem["client.pem"].decode(),  # the PEM text
        private_key=pem["client.key"],  # bytes
    )
    try:
        with Client(server.target, tls=mutual, token="t0ken", timeout=10) as c:
            assert c.translate("사과", request_id="req-1").text == "echo 사과"
        assert server.metadata[-1]["authorization"] == "Bearer t0ken"
        assert server.metadata[-1]["x-request-id"] == "req-1"
        assert server.metadata[-1]["user-agent"].startswith("hanseq-client-python/")
        no_client_cert = TLS(root_certificates=pem["ca.pem"])
        for tls in (no_client_cert, None):  # refused by the server: never reaches the handler
            refused = Client(server.target, tls=tls, retry=NO_RETRY, timeout=10)
            with refused, pytest.raises(E.Unavailable):
                refused.translate("사과")
        assert server.calls == 1
    finally:
        server.stop()


def test_tls_settings_are_checked_when_the_client_is_made(certificates):
    with pytest.raises(ValueError, match="certificate_chain and private_key together"):
        Client("127.0.0.1:1", tls=TLS(certificate_chain=certificates / "client.pem"))
    with pytest.raises(FileNotFoundError):
        Client("127.0.0.1:1", tls=TLS(root_certificates=certificates / "missing.pem"))
    with pytest.raises(ValueError, match="max_attempts must be in 1..5"):
        Retry(max_attempts=9)


# -- retries ---------------------------------------------------------------------------------


def test_unavailable_is_retried_with_backoff():
    unavailable = (grpc.StatusCode.UNAVAILABLE, "worker died", ())
    server = ScriptedServer(lambda n: unavailable if n <= 3 else None)
    try:
        with Client(server.target, retry=Retry(initial_backoff=0.05)) as c:
            assert c.translate("사과").text == "echo 사과"
        assert server.calls == 4
        with Client(server.target, retry=NO_RETRY) as c:
            server.calls = 0
            with pytest.raises(E.Unavailable):
                c.translate("사과")
            assert server.calls == 1
    finally:
        server.stop()


def test_overloaded_waits_as_long_as_the_server_asks():
    full = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("grpc-retry-pushback-ms", "400"),))
    server = ScriptedServer(lambda n: full if n <= 2 else None)
    try:
        with Client(server.target, retry=Retry(initial_backoff=0.01, max_backoff=0.02)) as c:
            assert c.translate("사과").text == "echo 사과"
        gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
        assert server.calls == 3 and all(gap >= 0.38 for gap in gaps)  # not the 20 ms backoff
    finally:
        server.stop()


async def test_a_stream_cut_midway_is_resumed_without_repeats():
    server = ScriptedServer(lambda n: 2 if n == 1 else None)  # the first attempt dies after 2
    try:
        with Client(server.target, retry=Retry(initial_backoff=0.01)) as c:
            texts = [u.text for u in c.stream("translate", "사과")]
        assert (
            texts
            == ["one", "one two", "one two three", "one two three four"]
            + ["one two three four five"] * 2
        )
        assert server.calls == 2
        server.calls = 0
        async with AsyncClient(server.target, retry=Retry(initial_backoff=0.01)) as c:
            updates = [u async for u in c.stream("translate", "사과", sample=True, seed=3)]
        assert len(updates) == 6 and updates[-1].final and server.calls == 2
        server.calls = 0
        with Client(server.target) as c:  # unseeded sampling would not repeat itself
            seen = []
            with pytest.raises(E.Unavailable):
                for update in c.stream("translate", "사과", sample=True):
                    seen.append(update.text)
        assert seen == ["one", "one two"] and server.calls == 1
    finally:
        server.stop()


def test_invalid_input_is_never_retried():
    server = ScriptedServer(lambda n: (grpc.StatusCode.INVALID_ARGUMENT, "text: too long", ()))
    try:
        with Client(server.target) as c, pytest.raises(E.InvalidInput):
            c.translate("사과")
        assert server.calls == 1
    finally:
        server.stop()


def test_a_killed_worker_costs_no_request(service_bundle_path):
    """Two workers; one is killed while requests are decoding. Its requests fail UNAVAILABLE
    on the server, and the client retries them onto the other: every call succeeds.

    Batches of at most 4 keep both workers fed from 16 callers. On a busy machine a worker can
    still be between batches when it is killed, holding nothing: then the kill is tried again
    on a worker that has served (up to three times), every call still having to succeed."""
    server = HanseqServer(
        service_bundle_path, devices="cpu,cpu", cpu_threads="1", max_batch_size="4"
    )
    server.start()
    try:
        served = set(_worker_pids(server))
        with Client(server.target, timeout=60) as c:
            for _ in range(3):
                results = _kill_a_worker_while_decoding(c, server, served)
                assert all(r.text for r in results)
                failed = [line for line in _scrape(server).splitlines() if "UNAVAILABLE" in line]
                if any(line.startswith("hanseq_requests_total{") for line in failed):
                    break
            else:
                pytest.fail("three kills found no request on the killed worker")
    finally:
        server.stop()


def _kill_a_worker_while_decoding(c: Client, server: HanseqServer, served: set[int]) -> list:
    """400 slow calls from 16 threads; SIGKILL to a worker that has served, after 50."""
    slow = dict(min_length=15, max_length=20, no_cache=True)
    with futures.ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(c.translate, TEXTS[i % 40], **slow) for i in range(400)]
        while sum(f.done() for f in calls) < 50:
            time.sleep(0.01)
        pids = _worker_pids(server)
        victim = next((pid for pid in pids if pid in served), pids[0])
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in calls]
    served.update(_worker_pids(server))  # the replacement served the calls after the kill
    served.discard(victim)
    return results


def test_the_same_client_works_across_a_server_restart(service_bundle_path):
    server = HanseqServer(service_bundle_path)
    server.start()
    try:
        with Client(server.target, timeout=30, retry=Retry(initial_backoff=0.05)) as c:
            before = c.translate(TEXTS[6], no_cache=True).text
            server.stop()
            with pytest.raises(E.Unavailable):  # down: a retryable error, not a hang
                c.translate(TEXTS[6])
            restarted = threading.Thread(target=server.start)
            restarted.start()
            restarted.join()
            assert c.translate(TEXTS[6], no_cache=True).text == before
    finally:
        server.stop()


def _worker_pids(server: HanseqServer) -> list[int]:
    children = psutil.Process(server.process.pid).children()
    return [p.pid for p in children if any("spawn_main" in part for part in p.cmdline())]


def _scrape(server: HanseqServer) -> str:
    import urllib.request

    port = _metrics_port(server)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _metrics_port(server: HanseqServer) -> int:
    listening = psutil.Process(server.process.pid).net_connections(kind="tcp")
    ports = {c.laddr.port for c in listening if c.status == psutil.CONN_LISTEN}
    (port,) = ports - {server.port}
    return port
