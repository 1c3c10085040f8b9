"""Several bundles and versions at once: the repository's layouts and policies, the routes a
request takes, and a real server serving two versions (one reloaded while the other answers,
pinned requests, a traffic split, unloading, the cache keeping versions apart)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from hanseq.service.errors import NotFound, Unimplemented
from hanseq.service.repository import (
    ModelKey,
    Policy,
    RepositoryError,
    read_policy,
    scan,
    version_order,
)
from hanseq.service.routing import build
from hanseq.service.server import create_app
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from hanseq_client import AsyncClient, InvalidInput
from tests.conftest import (
    REPO,
    free_port,
    reversal_pairs,
    run_client_example,
    settings_for,
    start_server,
    wait_serving,
)

CODE = grpc.StatusCode
TEXTS = [line.split("\t")[0] for line in reversal_pairs(30, seed=41)]


def fake_bundle(path: Path, id_: str = "toy", version: str = "1", tasks=("translate",)) -> Path:
    """A manifest alone: enough for the repository, which never loads weights."""
    path.mkdir(parents=True)
    manifest = {"id": id_, "version": version, "tasks": {t: {} for t in tasks}}
    (path / "bundle.json").write_text(json.dumps(manifest))
    return path


# ---- the repository ------------------------------------------------------------------------


def test_a_bundle_a_flat_directory_and_versioned_bundles(tmp_path):
    one = fake_bundle(tmp_path / "one", "hanseq-multitask", "20261201-133120")
    assert list(scan(one).models) == [ModelKey("hanseq-multitask", "20261201-133120")]
    for version in ("2", "10", "9"):
        fake_bundle(tmp_path / "keyphrase" / version, "anything", "x", ("keyphrase",))
    repo = scan(tmp_path)
    # the newest by natural order (10 > 9 > 2), named after the directories
    assert sorted(repo.models) == [
        ModelKey("hanseq-multitask", "20261201-133120"),
        ModelKey("keyphrase", "10"),
    ]
    assert repo.models[ModelKey("keyphrase", "10")].tasks == ("keyphrase",)
    assert repo.load_one("keyphrase", "2").path == tmp_path / "keyphrase" / "2"
    assert repo.load_one("keyphrase", "3") is None


def test_version_policies(tmp_path):
    for version in ("1", "2", "3"):
        fake_bundle(tmp_path / "m" / version)
    policy = tmp_path / "m" / "serving.yaml"
    cases = {
        "versions: all": ["1", "2", "3"],
        "versions: latest\nlatest: 2": ["2", "3"],
        "versions: [1, 3]\ndefault: 1": ["1", "3"],
    }
    for text, served in cases.items():
        policy.write_text(text)
        assert [k.version for k in sorted(scan(tmp_path).models)] == served, text
    assert sorted(["10", "9", "20261203-1", "20261201-9"], key=version_order) == [
        "9",
        "10",
        "20261201-9",
        "20261203-1",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("versions: [4]", r"versions \['4'\] are not in"),
        ("versions: newest", "versions must be latest, all or a list"),
        ("latest: 0", "latest must be a whole number >= 1"),
        ("versions: all\ntraffic: {1: 60, 2: 30}", "must add up to 100 .* add up to 90"),
        ("versions: [2]\ndefault: 1", "version '1' is named but not served"),
        ("canary: 10", r"unknown keys \['canary'\]"),
        ("traffic: {1: 101}", r"traffic\[1\] must be a whole percent"),
        ("- a list", "must be a mapping"),
    ],
)
def test_a_bad_policy_names_its_file_and_key(tmp_path, text, error):
    for version in ("1", "2"):
        fake_bundle(tmp_path / "m" / version)
    (tmp_path / "m" / "serving.yaml").write_text(text)
    with pytest.raises(RepositoryError, match=error) as caught:
        scan(tmp_path)
    assert "serving.yaml" in str(caught.value)


def test_an_empty_or_missing_repository_says_what_it_expects(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        scan(tmp_path / "nope")
    with pytest.raises(RepositoryError, match=r"<name>/<version>/bundle.json"):
        scan(tmp_path)
    fake_bundle(tmp_path / "a", "same")
    fake_bundle(tmp_path / "b", "same", "2")
    with pytest.raises(RepositoryError, match="'same' is served from another directory"):
        scan(tmp_path)


# ---- routes --------------------------------------------------------------------------------


def routes(tmp_path: Path, policies: dict[str, str] | None = None):
    repo = scan(tmp_path)
    for name, text in (policies or {}).items():
        repo.policies[name] = read_policy(_write(tmp_path / f"{name}.yaml", text))
    return build({k: m.tasks for k, m in repo.models.items()}, repo.policies)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_request_naming_nothing_gets_its_tasks_default(tmp_path):
    fake_bundle(tmp_path / "base", "base", "1", ("translate", "respond"))
    fake_bundle(tmp_path / "kp" / "1", tasks=("translate", "keyphrase"))
    fake_bundle(tmp_path / "kp" / "2", tasks=("translate", "keyphrase"))
    (tmp_path / "kp" / "serving.yaml").write_text("versions: all\ndefault: 1")
    with pytest.raises(RepositoryError, match=r"'translate' is served by base, kp \(none claims"):
        routes(tmp_path)
    declined = routes(tmp_path, {"kp": "default_for: [keyphrase]"})  # declines translate
    assert declined.resolve("translate") == ModelKey("base", "1")
    both = {"kp": "default_for: [translate]", "base": "default_for: [translate]"}
    with pytest.raises(RepositoryError, match="base, kp all claim it"):
        routes(tmp_path, both)
    table = routes(tmp_path, {"base": "default_for: [translate]"})
    assert table.resolve("translate") == ModelKey("base", "1")
    assert table.resolve("keyphrase") == ModelKey("kp", "1")  # the policy's default
    assert table.resolve("translate", "kp") == ModelKey("kp", "1")
    assert table.resolve("keyphrase", "kp", "2") == ModelKey("kp", "2")  # pinned
    with pytest.raises(NotFound, match=r"model.version: version '3' of kp .* served: 1"):
        table.resolve("keyphrase", "kp", "3")
    with pytest.raises(NotFound, match="model.name: bundle 'other' is not served; served: base"):
        table.resolve("translate", "other")
    with pytest.raises(Unimplemented, match="base/1 does not serve task 'keyphrase'"):
        table.resolve("keyphrase", "base")
    with pytest.raises(Unimplemented, match="task 'summarize' is not served here"):
        table.resolve("summarize")
    with pytest.raises(RepositoryError, match="default_for names 'summarize'"):
        routes(tmp_path, {"base": "default_for: [translate, summarize]"})


def test_a_traffic_split_draws_by_its_percents(tmp_path):
    for version in ("1", "2"):
        fake_bundle(tmp_path / "m" / version)
    (tmp_path / "m" / "serving.yaml").write_text("versions: all\ntraffic: {1: 80, 2: 20}")
    table = routes(tmp_path)
    random.seed(3)
    drawn = Counter(table.resolve("translate").version for _ in range(2000))
    assert 1450 < drawn["1"] < 1750 and drawn["1"] + drawn["2"] == 2000
    assert table.default_key("translate") == ModelKey("m", "1")
    assert {table.resolve("translate", "m", "2").version for _ in range(50)} == {"2"}
    repo = scan(tmp_path)  # version 1 unloaded: 2 takes every request naming no version
    left = build({ModelKey("m", "2"): ("translate",)}, repo.policies)
    assert {left.resolve("translate").version for _ in range(50)} == {"2"}
    assert left.default_key("translate") == ModelKey("m", "2")
    fake_bundle(tmp_path / "m" / "3")
    (tmp_path / "m" / "serving.yaml").write_text("versions: all\ntraffic: {1: 80, 2: 10, 3: 10}")
    repo = scan(tmp_path)
    two_left = build({ModelKey("m", v): ("translate",) for v in ("2", "3")}, repo.policies)
    assert Counter(two_left.resolve("translate").version for _ in range(400)).keys() == {"2", "3"}


def test_policy_defaults():
    policy = Policy()
    assert policy.versions == "latest" and policy.latest == 1 and not policy.traffic
    assert policy.default_for is None  # any task it has


# ---- a real server with two versions --------------------------------------------------------


@pytest.fixture(scope="module")
def repository(service_bundle_path, tmp_path_factory) -> Path:
    """models/toy/{v1,v2}: the same weights; v2 decodes translate with beam 2 by default."""
    root = tmp_path_factory.mktemp("repository")
    for version in ("v1", "v2"):
        shutil.copytree(service_bundle_path, root / "toy" / version)
    manifest_path = root / "toy" / "v2" / "bundle.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tasks"]["translate"]["decoding"] = {"beam_size": 2}
    manifest_path.write_text(json.dumps(manifest))
    (root / "toy" / "serving.yaml").write_text("versions: all\ndefault: v1\n")
    return root


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def two(repository):
    app = await create_app(settings_for(repository, admin_without_auth=True))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, hanseq_pb2_grpc.Seq2SeqStub(channel)
    await channel.close()
    await app.stop()


pytestmark_async = pytest.mark.asyncio(loop_scope="module")


def v(version: str, name: str = "toy") -> pb.ModelRef:
    return pb.ModelRef(name=name, version=version)


async def failure(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details()


@pytestmark_async
async def test_two_versions_are_listed_and_each_answers_when_named(two):
    app, stub = two
    listed = await stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.version) for m in listed.models] == [("toy", "v1"), ("toy", "v2")]
    assert [m.traffic_share for m in listed.models] == [1.0, 0.0]
    assert list(listed.models[0].default_for) == ["translate", "respond", "summarize"]
    assert not listed.models[1].default_for and listed.models[1].workers == 1
    beams = {m.version: m.tasks[0].defaults.beam_size for m in listed.models}
    assert beams == {"v1": 1, "v2": 2}  # each version's own defaults
    assert {t.model_version for t in listed.tasks} == {"v1"}
    assert listed.tasks[0].model_name == "toy"
    text = TEXTS[0]
    unnamed = await stub.Translate(pb.TranslateRequest(text=text))
    pinned = await stub.Translate(pb.TranslateRequest(text=text, model=v("v2")))
    assert (unnamed.model_name, unnamed.model_version) == ("toy", "v1")
    assert (pinned.model_name, pinned.model_version) == ("toy", "v2")
    assert not pinned.cached  # the cache keys on the version: v1's answer is not v2's
    again = await stub.Translate(pb.TranslateRequest(text=text, model=v("v2")))
    assert again.cached and again.model_version == "v2"
    batch = await stub.GenerateBatch(
        pb.GenerateBatchRequest(task="summarize", texts=TEXTS[1:4], model=v("v2"))
    )
    assert {r.model_version for r in batch.results} == {"v2"}
    stream = [
        m
        async for m in stub.GenerateStream(
            pb.GenerateRequest(task="respond", text=TEXTS[4], model=v("v2"))
        )
    ]
    assert stream[-1].result.model_version == "v2"


@pytestmark_async
async def test_a_model_that_is_not_served_is_named_in_the_error(two):
    _, stub = two
    code, message = await failure(stub.Translate(pb.TranslateRequest(text="사과", model=v("v9"))))
    assert code == CODE.NOT_FOUND and "version 'v9' of toy is not served; served: v1" in message
    code, message = await failure(
        stub.Generate(pb.GenerateRequest(task="translate", text="사과", model=v("", "nope")))
    )
    assert code == CODE.NOT_FOUND and "bundle 'nope' is not served; served: toy" in message
    code, message = await failure(stub.LoadModel(pb.LoadModelRequest(name="toy", version="v7")))
    assert code == CODE.NOT_FOUND and "no bundle toy/v7" in message
    code, message = await failure(stub.UnloadModel(pb.UnloadModelRequest(name="nope")))
    assert code == CODE.NOT_FOUND and "served: toy/v1, toy/v2" in message
    code, message = await failure(stub.LoadModel(pb.LoadModelRequest()))
    assert code == CODE.INVALID_ARGUMENT and message.startswith("name:")


@pytestmark_async
async def test_one_version_reloads_while_the_other_answers(two):
    app, stub = two
    pids = {k.version: [w.pid for w in s.pool.workers] for k, s in app.models.served.items()}
    slow = pb.DecodingOptions(min_length=150, max_length=160, no_cache=True)
    in_flight = [
        asyncio.ensure_future(
            stub.Translate(pb.TranslateRequest(text=t, options=slow, model=v("v1")))
        )
        for t in TEXTS[5:9]
    ]
    reply = await stub.LoadModel(pb.LoadModelRequest(name="toy", version="v2"))
    assert [(m.name, m.version) for m in reply.loaded] == [("toy", "v2")]
    answers = await asyncio.gather(*in_flight)
    assert all(a.model_version == "v1" and a.text for a in answers)
    after = {k.version: [w.pid for w in s.pool.workers] for k, s in app.models.served.items()}
    assert after["v1"] == pids["v1"]  # v1's worker was never touched
    assert after["v2"] != pids["v2"]  # v2's is a new process
    ok = await stub.Translate(pb.TranslateRequest(text=TEXTS[9], model=v("v2")))
    assert ok.model_version == "v2"


@pytestmark_async
async def test_unload_then_load_one_version(two):
    app, stub = two
    reply = await stub.UnloadModel(pb.UnloadModelRequest(name="toy", version="v2"))
    assert [(m.name, m.version) for m in reply.models] == [("toy", "v1")]
    code, message = await failure(stub.Translate(pb.TranslateRequest(text="사과", model=v("v2"))))
    assert code == CODE.NOT_FOUND and "served: v1" in message
    assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[10]))).model_version == "v1"
    code, message = await failure(stub.UnloadModel(pb.UnloadModelRequest(name="toy")))
    assert code == CODE.FAILED_PRECONDITION and "all this server serves" in message
    reply = await stub.LoadModel(pb.LoadModelRequest(name="toy"))  # as serving.yaml says
    assert [m.version for m in reply.loaded] == ["v1", "v2"]
    assert [m.version for m in reply.models] == ["v1", "v2"]
    for _ in range(100):  # the unloaded version's worker is gone once it was idle
        if len(app.models.workers()) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(app.models.workers()) == 2


@pytestmark_async
async def test_a_traffic_split_serves_both_and_counts_each_version(two, repository):
    app, stub = two
    policy = repository / "toy" / "serving.yaml"
    policy.write_text("versions: all\ntraffic: {v1: 50, v2: 50}\n")
    try:
        await stub.ReloadModels(pb.ReloadModelsRequest())
        before = {
            ver: app.metrics.model_requests.labels("toy", ver, "translate")._value.get()
            for ver in ("v1", "v2")
        }
        no_cache = pb.DecodingOptions(no_cache=True, max_length=4)
        replies = await asyncio.gather(
            *(
                stub.Translate(pb.TranslateRequest(text=TEXTS[i % 30], options=no_cache))
                for i in range(60)
            )
        )
        drawn = Counter(r.model_version for r in replies)
        assert set(drawn) == {"v1", "v2"} and sum(drawn.values()) == 60  # 2^-59 to fail
        counted = {
            ver: app.metrics.model_requests.labels("toy", ver, "translate")._value.get()
            - before[ver]
            for ver in ("v1", "v2")
        }
        assert counted == {"v1": drawn["v1"], "v2": drawn["v2"]}
        listed = await stub.ListModels(pb.ListModelsRequest())
        assert [m.traffic_share for m in listed.models] == [0.5, 0.5]
        pinned = await asyncio.gather(
            *(stub.Translate(pb.TranslateRequest(text=TEXTS[0], model=v("v2"))) for _ in range(8))
        )
        assert {p.model_version for p in pinned} == {"v2"}  # a pinned request is never split
        await stub.UnloadModel(pb.UnloadModelRequest(name="toy", version="v1"))
        listed = await stub.ListModels(pb.ListModelsRequest())  # v2 takes v1's share
        assert [(m.version, m.traffic_share) for m in listed.models] == [("v2", 1.0)]
        assert {t.model_version for t in listed.tasks} == {"v2"} and len(listed.tasks) == 3
        alone = await asyncio.gather(
            *(
                stub.Translate(pb.TranslateRequest(text=TEXTS[1], options=no_cache))
                for _ in range(8)
            )
        )
        assert {a.model_version for a in alone} == {"v2"}
    finally:
        policy.write_text("versions: all\ndefault: v1\n")
        await stub.ReloadModels(pb.ReloadModelsRequest())


@pytestmark_async
async def test_a_load_that_would_make_a_task_ambiguous_is_refused(
    two, repository, service_bundle_path
):
    app, stub = two
    other = repository / "other"
    shutil.copytree(service_bundle_path, other / "1")
    try:
        code, message = await failure(stub.LoadModel(pb.LoadModelRequest(name="other")))
        assert code == CODE.FAILED_PRECONDITION
        assert "'translate' is served by other, toy (none claims it)" in message
        assert sorted(str(k) for k in app.models.served) == ["toy/v1", "toy/v2"]  # unchanged
        (other / "serving.yaml").write_text("default_for: []  # answers only when named\n")
        reply = await stub.LoadModel(pb.LoadModelRequest(name="other"))
        assert [(m.name, m.version) for m in reply.loaded] == [("other", "1")]
        named = await stub.Translate(pb.TranslateRequest(text=TEXTS[11], model=v("", "other")))
        assert named.model_name == "other"
        assert (await stub.Translate(pb.TranslateRequest(text=TEXTS[11]))).model_name == "toy"
        await stub.UnloadModel(pb.UnloadModelRequest(name="other"))
    finally:
        shutil.rmtree(other)


@pytestmark_async
async def test_the_client_names_versions_and_loads_them(two):
    app, _ = two
    async with AsyncClient(f"127.0.0.1:{app.port}") as client:
        result = await client.translate(TEXTS[12], model="toy", model_version="v2")
        assert (result.model_name, result.model_version) == ("toy", "v2")
        assert (await client.translate(TEXTS[12])).model_version == "v1"
        listed = await client.models()
        assert [(m.name, m.version, m.traffic_share) for m in listed.models] == [
            ("toy", "v1", 1.0),
            ("toy", "v2", 0.0),
        ]
        assert listed.tasks[0].model_name == "toy"
        with pytest.raises(InvalidInput, match="model_version: is a version of a bundle"):
            await client.translate(TEXTS[12], model_version="v2")
        with pytest.raises(InvalidInput, match="version 'v3' of toy is not served"):
            await client.translate(TEXTS[12], model="toy", model_version="v3")
        loaded = await client.load_model("toy", "v2")
        assert [(m.name, m.version) for m in loaded] == [("toy", "v2")]
        items = await client.batch_items("respond", TEXTS[:2], model="toy", model_version="v2")
        assert {i.model_version for i in items} == {"v2"}


@pytestmark_async
async def test_the_command_line_names_versions_and_loads_them(two):
    app, _ = two
    target = ["--target", f"127.0.0.1:{app.port}"]

    async def cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "hanseq-client"),
            *target,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    models = await cli("models")
    assert "served:" in models and "toy v2: translate,respond,summarize; named only" in models
    assert "toy v1: translate,respond,summarize; default for translate,respond,summarize" in models
    answer = json.loads(await cli("translate", "--model", "toy", "--model-version", "v2",
                                  "--json", TEXTS[13]))  # fmt: skip
    assert (answer["model_name"], answer["model_version"]) == ("toy", "v2")
    assert (await cli("load", "toy", "v2")).startswith("loaded\ttoy\tv2\t")
    assert (await cli("unload", "toy", "v2")) == "serving\ttoy\tv1\ttranslate,respond,summarize\n"
    assert (await cli("load", "toy")).splitlines()[1].startswith("loaded\ttoy\tv2")


def readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## Several bundles and versions", 1)[1].split("\n## ", 1)[0]


def test_the_readme_repository_runs_as_written(service_bundle_path, tmp_path):
    """The README's tree, its serving.yaml verbatim, and its commands, against `hanseq serve`."""
    section = readme_section()
    (policy,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    (tree,) = re.findall(r"```text\n(.*?)```", section, flags=re.S)
    (shell,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    versions = re.findall(r"^\s+(\d{8}-\d{6})/bundle.json", tree, flags=re.M)
    assert versions == ["20261201-133120", "20261203-090000"] and "keyphrase/" in tree
    models = tmp_path / "models"
    for version in versions:
        shutil.copytree(service_bundle_path, models / "hanseq-multitask" / version)
    (models / "hanseq-multitask" / "serving.yaml").write_text(policy)
    flat = shutil.copytree(service_bundle_path, models / "keyphrase")
    manifest = json.loads((flat / "bundle.json").read_text())
    (flat / "bundle.json").write_text(json.dumps({**manifest, "id": "keyphrase"}))
    port = free_port()
    server = start_server(models, port, admin_without_auth="true")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, server)
        outputs = []
        for command in shell.replace("\\\n", " ").splitlines():
            run = run_client_example(command, f"127.0.0.1:{port}", REPO)
            assert run.returncode == 0, (command, run.stderr)
            outputs.append(run.stdout)
        listing, translated, loaded, unloaded, again = outputs
        assert (
            "hanseq-multitask 20261203-090000: translate,respond,summarize; named only" in listing
        )
        assert re.search(r"keyphrase \S+: translate,respond,summarize; named only", listing)
        assert "20261201-133120: translate,respond,summarize; default for translate" in listing
        assert translated.strip()
        assert loaded.startswith("loaded\thanseq-multitask\t20261203-090000\t")
        assert "20261203-090000" not in unloaded and "keyphrase" in unloaded
        assert [line.split("\t")[2] for line in again.splitlines()] == versions
    finally:
        server.terminate()
        assert server.wait(60) == 0


@pytestmark_async
async def test_stopping_the_server_stops_a_version_still_draining(repository):
    """An unloaded version finishing its rows when the server stops: its workers stop too."""
    app = await create_app(settings_for(repository, admin_without_auth=True, grace_period_s=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    v2 = app.models.served[ModelKey("toy", "v2")]
    slow = pb.DecodingOptions(min_length=200, max_length=220, no_cache=True)
    call = stub.Translate(pb.TranslateRequest(text=TEXTS[14], options=slow, model=v("v2")))
    for _ in range(200):  # until its row is on v2's worker
        if v2.pool.busy_count():
            break
        await asyncio.sleep(0.02)
    await stub.UnloadModel(pb.UnloadModelRequest(name="toy", version="v2"))
    assert list(app.models._draining.values()) == [v2]  # answering its row still
    processes = [w._process for w in v2.pool.workers]
    await app.stop()
    call.cancel()
    await channel.close()
    for process in processes:
        process.join(10)
        assert not process.is_alive()


def serve_until_it_exits(models: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hanseq"), "serve"],
        env={**os.environ, "HANSEQ_MODELS": str(models), "HANSEQ_PORT": "0",
             "HANSEQ_METRICS_PORT": "-1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_serve_refuses_a_repository_it_cannot_serve_naming_the_setting(tmp_path):
    """A bad policy or an ambiguous task stops `hanseq serve` at once: exit 2, one line that
    names HANSEQ_MODELS and the file (no worker is started for it)."""
    for version in ("1", "2"):
        fake_bundle(tmp_path / "m" / version)
    (tmp_path / "m" / "serving.yaml").write_text("versions: all\ntraffic: {1: 60}\n")
    fake_bundle(tmp_path / "flat", "flat")
    cases = [
        (tmp_path, "serving.yaml: traffic percents must add up to 100"),
        (tmp_path / "nope", "does not exist"),
    ]
    for models, problem in cases:
        run = serve_until_it_exits(models)
        assert run.returncode == 2, run.stderr
        assert f"error: models (HANSEQ_MODELS) {models}" in run.stderr and problem in run.stderr
    (tmp_path / "m" / "serving.yaml").write_text("versions: all\n")
    run = serve_until_it_exits(tmp_path)
    assert run.returncode == 2 and "'translate' is served by flat, m (none claims it)" in run.stderr
