"""Bearer tokens and TLS on a real server (create_app on a free port), called by real clients."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hanseq.engine.config import ConfigurationError
from hanseq.service.auth import load_tokens, token_ok
from hanseq.service.server import create_app
from hanseq.service.settings import load_settings
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from hanseq_client import NO_RETRY, TLS, AsyncClient, Unauthenticated, Unavailable
from tests.conftest import make_certificates, settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")
ALICE, BOB = "alice-0123456789abcdef", "bob-0123456789abcdef"
ADMIN_TOKEN = "root-0123456789abcdef"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# one token per line\n{ALICE}\n\n  {BOB}  \nadmin:{ADMIN_TOKEN}\n")
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def guarded(service_bundle_path, token_file):
    app = await create_app(settings_for(service_bundle_path, auth_tokens_file=str(token_file)))
    yield app
    await app.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_calls_need_a_known_token(guarded):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
        request = pb.TranslateRequest(text="사과 바다")
        for metadata in [(), bearer("alice-0123456789abcdeX"), (("authorization", ALICE),)]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Translate(request, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in caught.value.details()
        for token in (ALICE, BOB):
            assert (await stub.Translate(request, metadata=bearer(token))).text
        stream = stub.GenerateStream(pb.GenerateRequest(task="translate", text="사과"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [m async for m in stream]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open_and_reflection_does_not(guarded):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in reflect.ServerReflectionInfo(iter([ask]))]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = [r async for r in reflect.ServerReflectionInfo(iter([ask]), metadata=bearer(BOB))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "hanseq.v1.Seq2Seq" in names


async def test_the_client_sends_its_token_and_refusals_are_counted(guarded):
    target = f"127.0.0.1:{guarded.port}"
    async with AsyncClient(target, token=ALICE) as client:
        assert (await client.translate("하늘 바다")).text
    async with AsyncClient(target, retry=NO_RETRY) as client:
        with pytest.raises(Unauthenticated, match="missing or invalid bearer token"):
            await client.translate("하늘 바다")
    url = f"http://127.0.0.1:{guarded.metrics.port}/metrics"
    scraped = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'hanseq_requests_total{code="UNAUTHENTICATED",task="translate"}' in scraped


async def test_tokens_come_from_the_file_and_the_env(token_file):
    s = load_settings(
        {"auth_tokens_file": str(token_file)}, env={"HANSEQ_AUTH_TOKENS": "carol-0123456789abcdef"}
    )
    assert set(load_tokens(s).callers) == {
        t.encode() for t in (ALICE, BOB, "carol-0123456789abcdef", ADMIN_TOKEN)
    }
    assert load_tokens(s).admins == (ADMIN_TOKEN.encode(),)  # written admin:TOKEN
    assert not load_tokens(load_settings({}, env={}))  # none: no authentication
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        load_tokens(load_settings({"auth_tokens": "short"}, env={}))
    assert token_ok((b"x" * 16,), b"x" * 16) and not token_ok((b"x" * 16,), None)


async def test_tls_and_mutual_tls(service_bundle_path, certificates):
    c = certificates
    tls = {"tls_cert_file": str(c / "server.pem"), "tls_key_file": str(c / "server.key")}
    app = await create_app(settings_for(service_bundle_path, **tls))
    try:
        target = f"localhost:{app.port}"
        async with AsyncClient(target, tls=TLS(root_certificates=c / "ca.pem")) as client:
            assert (await client.summarize("학교 친구")).text
        async with AsyncClient(target, retry=NO_RETRY, timeout=5) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.summarize("학교 친구")
    finally:
        await app.stop()
    mutual = {**tls, "tls_client_ca_file": str(c / "ca.pem")}
    app = await create_app(settings_for(service_bundle_path, **mutual))
    try:
        target = f"localhost:{app.port}"
        own = TLS(c / "ca.pem", c / "client.pem", c / "client.key")
        async with AsyncClient(target, tls=own) as client:
            assert (await client.summarize("학교 친구")).text
        no_cert = TLS(root_certificates=c / "ca.pem")
        async with AsyncClient(target, tls=no_cert, retry=NO_RETRY, timeout=5) as stranger:
            with pytest.raises(Unavailable):
                await stranger.summarize("학교 친구")
    finally:
        await app.stop()


async def test_tls_settings_are_checked(certificates):
    with pytest.raises(ConfigurationError, match="tls_cert_file and tls_key_file go together"):
        load_settings({"tls_cert_file": str(certificates / "server.pem")}, env={})
    with pytest.raises(ConfigurationError, match="tls_client_ca_file needs"):
        load_settings({"tls_client_ca_file": str(certificates / "ca.pem")}, env={})
    with pytest.raises(ConfigurationError, match="is not a file"):
        load_settings(
            {"tls_cert_file": "/nonexistent.pem", "tls_key_file": "/nonexistent.key"}, env={}
        )


async def test_reload_needs_an_admin_token(guarded):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadModels(pb.ReloadModelsRequest(), metadata=bearer(ALICE))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs a token marked admin:" in caught.value.details()
        reply = await stub.ReloadModels(pb.ReloadModelsRequest(), metadata=bearer(ADMIN_TOKEN))
        assert [t.task for t in reply.tasks] == ["translate", "respond", "summarize"]
        request = pb.TranslateRequest(text="사과 바다")  # an admin token is a caller's too
        assert (await stub.Translate(request, metadata=bearer(ADMIN_TOKEN))).text


@pytest.mark.parametrize("allowed", [False, True])
async def test_without_tokens_admin_rpcs_are_off_unless_enabled(service_bundle_path, allowed):
    settings = settings_for(service_bundle_path, admin_without_auth=allowed)
    app = await create_app(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
            assert (await stub.Translate(pb.TranslateRequest(text="사과"))).text  # open
            if allowed:
                assert (await stub.ReloadModels(pb.ReloadModelsRequest())).tasks
                return
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ReloadModels(pb.ReloadModelsRequest())
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "HANSEQ_ADMIN_WITHOUT_AUTH=true" in caught.value.details()
    finally:
        await app.stop()
