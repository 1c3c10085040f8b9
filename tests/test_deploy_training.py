"""deploy/k8s/training: the PyTorchJob that trains the shipped config on a cluster, offline.

`kubectl kustomize` renders the kustomization (no warning allowed). The PyTorchJob is
validated against the Training Operator's schema vendored in deploy/k8s/training/schema/
(strict: an unknown field is an error, in the job and in the pod templates inside it, which
resolve to the strict Kubernetes schemas of kubernetes-validate); everything else against the
Kubernetes API schemas, as in test_deploy_k8s.py. Then the pieces must agree: the operator's
rules for the job, the command with the config, the mounts with the volumes, the GPUs with the
processes, the docs with the manifests.

Last, the command the pods run, read from the rendered manifest, runs here: with each mount a
local directory, a toy config in place of the shipped one, and the environment the operator
would give a one-node job (pkg/controller.v1/pytorch/{envvar,master,elastic}.go of
kubeflow/training-operator v1.9), two CPU processes (gloo) train a bundle.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from hanseq.engine.bundle import load_bundle
from hanseq.engine.config import load_config
from tests.conftest import REPO, free_port
from tests.test_deploy_k8s import assert_locked_down, render

K8S = REPO / "deploy" / "k8s"
TRAINING = K8S / "training"
SCHEMA = TRAINING / "schema" / "pytorchjob-kubeflow-v1.json"
DEPLOY_README = REPO / "deploy" / "README.md"
SHIPPED = REPO / "configs" / "multitask.yaml"
KUBERNETES = "1.33"  # the release test_deploy_k8s.py validates against
JOB = "hanseq-train"
# The operator finds the training container and its port by these names (the SDK's
# PYTORCHJOB_CONTAINER; PytorchJobDefaultContainerName and PytorchJobDefaultPortName in
# pkg/apis/kubeflow.org/v1/pytorch_types.go).
CONTAINER, PORT = "pytorch", "pytorchjob-port"
PART_OF = {"app.kubernetes.io/part-of": "hanseq"}


@pytest.fixture(scope="module")
def rendered() -> tuple[list[dict], str]:
    return render(TRAINING)


@pytest.fixture(scope="module")
def docs(rendered) -> list[dict]:
    return rendered[0]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def replicas(job: dict) -> dict[str, dict]:
    return job["spec"]["pytorchReplicaSpecs"]


def pod_of(job: dict, replica: str) -> tuple[dict, dict]:
    """A replica's pod spec and its training container."""
    pod = replicas(job)[replica]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == CONTAINER]
    return pod, container


def mounted(pod: dict, container: dict, path: str) -> tuple[dict, dict]:
    """The volume and the volumeMount that hold `path` in the container (the deepest one)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [
        m
        for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"nothing mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return volumes[mount["name"]], mount


def option(args: list[str], name: str) -> str:
    (i,) = [i for i, a in enumerate(args) if a == name]
    return args[i + 1]


# -- schemas ---------------------------------------------------------------------------------


def kubernetes_definitions() -> dict:
    """kubernetes-validate's strict definitions of the Kubernetes release we validate with."""
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    (directory,) = base.glob(f"v{KUBERNETES}.*-local-strict")
    return json.loads((directory / "_definitions.json").read_text())


@pytest.fixture(scope="module")
def job_schema() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    definitions = kubernetes_definitions()
    registry = referencing.Registry().with_resource(
        definitions["$id"], referencing.Resource.from_contents(definitions)
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_rendering_prints_no_warning(rendered):
    _, stderr = rendered
    assert stderr == ""


def test_every_rendered_object_validates(docs, job_schema):
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "PyTorchJob",
    ]
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            job_schema.validate(doc)
        else:
            validate(doc)
    validate(yaml.safe_load((TRAINING / "files-pod.yaml").read_text()))


@pytest.mark.parametrize(
    "path, value",
    [
        (["spec", "nprocPerNodes"], "1"),  # a misspelt field of the job
        (["spec", "runPolicy", "backoffLimit"], "6"),  # a string for an integer
        (["spec", "elasticPolicy"], {"rdzvBackend": "c10d", "minReplica": 1}),
        (["spec", "pytorchReplicaSpecs", "Worker", "restartPolicyy"], "OnFailure"),
        # ... and inside the pod template, by Kubernetes' own strict schema
        (["spec", "pytorchReplicaSpecs", "Master", "template", "spec", "nodeSelectr"], {}),
    ],
)
def test_the_schema_rejects_what_the_operator_does_not_define(docs, job_schema, path, value):
    broken = copy.deepcopy(one(docs, "PyTorchJob"))
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        job_schema.validate(broken)


def test_the_vendored_schema_says_where_it_is_from():
    schema = json.loads(SCHEMA.read_text())
    assert "kubeflow-training 1.9.4" in schema["description"]
    notes = (SCHEMA.parent / "README.md").read_text()
    assert "kubeflow-training` **1.9.4**" in notes and "Apache License 2.0" in notes
    assert (SCHEMA.parent / "derive.py").is_file()


# -- the operator's rules --------------------------------------------------------------------


def test_the_job_is_one_the_operator_accepts(docs):
    # Its admission webhook (pkg/webhooks/pytorch/pytorchjob_webhook.go): a DNS-1035 name,
    # only Master and Worker, exactly one Master; every replica's container named `pytorch`.
    job = one(docs, "PyTorchJob")
    assert job["metadata"]["name"] == JOB and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", JOB)
    assert set(replicas(job)) == {"Master", "Worker"}
    assert replicas(job)["Master"]["replicas"] == 1
    assert replicas(job)["Worker"]["replicas"] >= 1
    for name, spec in replicas(job).items():
        # OnFailure: a failed container restarts (and resumes); the restarts count towards
        # runPolicy.backoffLimit, which counts OnFailure and Always replicas only.
        assert spec["restartPolicy"] == "OnFailure", name
        _, container = pod_of(job, name)
        assert [p["name"] for p in container["ports"]] == [PORT]
    assert job["spec"]["runPolicy"]["backoffLimit"] > 0
    # The same pod for every rank.
    assert replicas(job)["Master"]["template"] == replicas(job)["Worker"]["template"]


def test_one_process_per_gpu_on_gpu_nodes(docs):
    job = one(docs, "PyTorchJob")
    for name in replicas(job):
        pod, container = pod_of(job, name)
        resources = container["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]
        assert resources["requests"]["nvidia.com/gpu"] == gpus >= 1
        # PET_NPROC_PER_NODE comes from nprocPerNode: one DDP process per GPU.
        assert job["spec"]["nprocPerNode"] == str(gpus)
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        # NCCL needs more shared memory than a container's default 64 MB.
        shm, _ = mounted(pod, container, "/dev/shm")
        assert shm["emptyDir"]["medium"] == "Memory"


def test_the_pods_are_locked_down_and_labelled(docs):
    job = one(docs, "PyTorchJob")
    for doc in docs:
        assert doc["metadata"]["namespace"] == "hanseq", doc["kind"]
        assert PART_OF.items() <= doc["metadata"]["labels"].items(), doc["kind"]
    files = yaml.safe_load((TRAINING / "files-pod.yaml").read_text())
    pods = [(r["template"]["metadata"], r["template"]["spec"]) for r in replicas(job).values()]
    for metadata, pod in [*pods, (files["metadata"], files["spec"])]:
        assert PART_OF.items() <= metadata["labels"].items()
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
        assert_locked_down(pod)
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"^USER 10001$", dockerfile, flags=re.M)


# -- the command, the config and the volumes -------------------------------------------------


def test_the_command_trains_the_shipped_config_from_and_to_the_volumes(docs):
    job = one(docs, "PyTorchJob")
    pod, container = pod_of(job, "Master")
    # Plain torchrun: every option of its own comes from the operator's PET_* variables.
    assert container["command"] == ["torchrun"]
    args = container["args"]
    assert args[:3] == ["-m", "hanseq.engine.cli", "train"]
    # The config: the generated ConfigMap, holding exactly configs/multitask.yaml.
    config = option(args, "--config")
    volume, mount = mounted(pod, container, config)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["readOnly"] is True
    key = config[len(mount["mountPath"]) :].lstrip("/")
    assert config_map["data"][key] == SHIPPED.read_text()
    assert (TRAINING / key).read_text() == SHIPPED.read_text()  # the copy kustomize reads
    # The corpora: HANSEQ_CORPORA (which wins over data.root) on the corpora volume, read-only.
    env = {e["name"]: e["value"] for e in container["env"]}
    corpora, mount = mounted(pod, container, env["HANSEQ_CORPORA"])
    assert mount["readOnly"] is True and corpora["persistentVolumeClaim"]["readOnly"] is True
    assert corpora["persistentVolumeClaim"]["claimName"] == "hanseq-corpora"
    cfg = load_config(SHIPPED)
    for task in cfg.tasks.values():
        for name in (task.train, task.valid, task.train_context, task.valid_context):
            assert not name or not Path(name).is_absolute()  # read under HANSEQ_CORPORA
    # The run (vocabularies, checkpoints, bundle): on the runs volume, writable.
    output = option(args, "--output-dir")
    runs, mount = mounted(pod, container, output)
    assert runs["persistentVolumeClaim"]["claimName"] == "hanseq-runs"
    assert not mount.get("readOnly") and not runs["persistentVolumeClaim"].get("readOnly")
    # Both volumes are claims of this kustomization, mountable on every node at once (all
    # ranks read the vocabularies and the checkpoint rank 0 writes).
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"hanseq-corpora", "hanseq-runs"}
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_files_pod_reaches_the_same_volumes_with_the_same_image(docs):
    files = yaml.safe_load((TRAINING / "files-pod.yaml").read_text())
    assert files["metadata"]["namespace"] == "hanseq"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in files["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    _, container = pod_of(one(docs, "PyTorchJob"), "Master")
    (files_container,) = files["spec"]["containers"]
    assert files_container["image"] == container["image"]
    assert re.search(r":gpu-\d+\.\d+\.\d+$", container["image"])  # a full version, not `latest`


# -- the environment the operator gives the pods ---------------------------------------------


def container_port(job: dict, replica: str) -> int:
    _, container = pod_of(job, replica)
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == PORT]
    return port


def operator_env(job: dict, replica: str, index: int) -> dict[str, str]:
    """What the Training Operator v1 adds to the training container's env of pod `index` of
    `replica` (setPodEnv in pkg/controller.v1/pytorch/envvar.go, with master.go and
    elastic.go)."""
    spec, name = job["spec"], job["metadata"]["name"]
    specs = replicas(job)
    env = {"PYTHONUNBUFFERED": "0"}
    total = sum(s.get("replicas", 1) for s in specs.values())
    if "Master" in specs:
        nproc = spec.get("nprocPerNode", "auto")  # the operator's default
        port, address = str(container_port(job, "Master")), f"{name}-master-0"
        rank = index + 1 if replica == "Worker" else index
        world = total * (int(nproc) if nproc.isdigit() else 1)
        env |= {
            "MASTER_PORT": port,
            "PET_MASTER_PORT": port,
            "MASTER_ADDR": address,
            "PET_MASTER_ADDR": address,
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "PET_NPROC_PER_NODE": nproc,
            "PET_NODE_RANK": str(rank),
        }
    elastic = spec.get("elasticPolicy")
    if elastic is None:
        env["PET_NNODES"] = str(total)
        return env
    host = elastic.get("rdzvHost", f"{name}-worker-0")
    port = elastic.get("rdzvPort", container_port(job, "Worker"))
    env["PET_RDZV_ENDPOINT"] = f"{host}:{port}"
    env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend", "c10d")
    if "minReplicas" in elastic or "maxReplicas" in elastic:
        env["PET_NNODES"] = f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
    else:
        env["PET_NNODES"] = str(specs["Worker"]["replicas"])
    if "maxRestarts" in elastic:
        env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    if "nProcPerNode" in elastic:
        env["PET_NPROC_PER_NODE"] = str(elastic["nProcPerNode"])
    if "rdzvId" in elastic:
        env["PET_RDZV_ID"] = elastic["rdzvId"]
    if elastic.get("rdzvConf"):
        env["PET_RDZV_CONF"] = ",".join(f"{c['key']}={c['value']}" for c in elastic["rdzvConf"])
    if elastic.get("standalone"):
        env["PET_STANDALONE"] = ""
    return env


def pod_env(job: dict, replica: str, index: int) -> dict[str, str]:
    """The container's env as the pod gets it: its own, then the operator's (appended, so an
    operator's value wins over one of the same name)."""
    _, container = pod_of(job, replica)
    return {e["name"]: e["value"] for e in container.get("env", [])} | operator_env(
        job, replica, index
    )


def test_every_pod_gets_a_whole_torchrun_configuration(docs):
    job = one(docs, "PyTorchJob")
    workers = replicas(job)["Worker"]["replicas"]
    ranks = set()
    for replica, count in (("Master", 1), ("Worker", workers)):
        for index in range(count):
            env = pod_env(job, replica, index)
            # torchrun's static rendezvous: how many nodes, which one this is, where node 0 is
            assert env["PET_NNODES"] == str(1 + workers)
            assert env["PET_NPROC_PER_NODE"] == job["spec"]["nprocPerNode"]
            assert env["PET_MASTER_ADDR"] == f"{JOB}-master-0"  # the Master's Service
            assert env["PET_MASTER_PORT"] == str(container_port(job, "Master"))
            ranks.add(env["PET_NODE_RANK"])
    assert ranks == {str(r) for r in range(1 + workers)}


# -- the docs ---------------------------------------------------------------------------------


def section(title: str) -> str:
    text = DEPLOY_README.read_text() + "\n## "  # the last section ends too
    (found,) = re.findall(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    return found


def test_the_readme_documents_the_job_as_the_manifests_make_it(docs):
    text = section("Training on Kubernetes")
    job = one(docs, "PyTorchJob")
    _, container = pod_of(job, "Master")
    assert "kubectl apply -k deploy/k8s/training" in text
    assert " ".join(container["command"] + container["args"]) in text  # the exact command
    for name in operator_env(job, "Master", 0):
        if name.startswith("PET_"):
            assert name in text, name
    for name in ("hanseq-corpora", "hanseq-runs", JOB, "backoffLimit", "OnFailure"):
        assert name in text, name
    assert "test_deploy_training.py" in section("Tests (offline: no cluster, no Docker)")


def elastic_job(tmp_path: Path) -> dict:
    """The elastic variant deploy/README.md shows (its ```yaml block with elasticPolicy),
    rendered as an operator would write it beside training/."""
    blocks = re.findall(r"```yaml\n(.*?)```", section("Training on Kubernetes"), flags=re.S)
    (block,) = [b for b in blocks if "elasticPolicy" in b]
    kustomization = yaml.safe_load(block)
    assert kustomization["resources"] == ["../training"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    kustomization["resources"] = [os.path.relpath(TRAINING, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs, stderr = render(tmp_path)
    assert stderr == ""
    return one(docs, "PyTorchJob")


def test_the_readme_elastic_variant_is_one_the_operator_accepts(tmp_path, job_schema):
    job = elastic_job(tmp_path)
    job_schema.validate(job)
    elastic = job["spec"]["elasticPolicy"]
    # The webhook: a Worker with elasticPolicy; the deprecated nProcPerNode not with nprocPerNode.
    assert set(replicas(job)) == {"Worker"} and "nProcPerNode" not in elastic
    assert elastic["rdzvBackend"] == "c10d"
    assert 1 <= elastic["minReplicas"] <= replicas(job)["Worker"]["replicas"]
    assert replicas(job)["Worker"]["replicas"] <= elastic["maxReplicas"]
    # Without a Master the operator sets no PET_NPROC_PER_NODE: the pod sets it, one per GPU.
    _, container = pod_of(job, "Worker")
    env = pod_env(job, "Worker", 0)
    assert env["PET_NPROC_PER_NODE"] == str(container["resources"]["limits"]["nvidia.com/gpu"])
    assert env["PET_NNODES"] == f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
    assert env["PET_RDZV_ENDPOINT"] == f"{JOB}-worker-0:{container_port(job, 'Worker')}"


# -- the pods' command, run here --------------------------------------------------------------


# The toy task in place of multitask.yaml: the pods' command sets where the corpora are and
# where the run goes, so data.root and output_dir here must not matter.
TOY_CONFIG = """
name: k8s-toy
data: {root: does-not-exist}
tasks: {reverse: {train: train.tsv, valid: valid.tsv}}
model: {rnn: gru, embedding_dim: 16, hidden_size: 16}
training: {output_dir: not-here, max_steps: 6, valid_every: 3, valid_max_examples: 10,
           batch_size: 16, progress: false}
"""


def _outcome(run: subprocess.CompletedProcess) -> str:
    """What a failed torchrun said: the start of its stderr (a rank's first error) and its
    end (torchrun's summary), and the end of its stdout (the steps the ranks got to)."""
    err = (
        run.stderr if len(run.stderr) <= 6000 else f"{run.stderr[:3000]}\n...\n{run.stderr[-3000:]}"
    )
    return f"exit {run.returncode}\nstderr:\n{err}\nstdout (end):\n{run.stdout[-2000:]}"


class LocalPod:
    """`replica`'s container as its pod would run it, on this machine: each mount a local
    directory, the toy config in place of the shipped one, and the operator's env with its
    Service names as 127.0.0.1 and a free port. `start()` runs the command once, as the
    container does each time it (re)starts."""

    def __init__(self, job: dict, replica: str, toy_corpus: Path, tmp_path: Path):
        self.job, self.replica, self.tmp_path = job, replica, tmp_path
        pod, self.container = pod_of(job, replica)
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.local: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            if mount["mountPath"] == "/dev/shm":
                continue  # the machine's own
            volume = volumes[mount["name"]]
            if volume.get("persistentVolumeClaim", {}).get("claimName") == "hanseq-corpora":
                self.local[mount["mountPath"]] = toy_corpus
                continue
            directory = self.local[mount["mountPath"]] = tmp_path / mount["name"]
            directory.mkdir()
            if "configMap" in volume:
                (directory / Path(self.arg("--config")).name).write_text(TOY_CONFIG)
        self.home, self.workdir = tmp_path / "home", tmp_path / "workdir"
        self.home.mkdir()
        self.workdir.mkdir()

    def arg(self, name: str) -> str:
        return option(self.container["args"], name)

    def here(self, value: str) -> str:
        for path, directory in self.local.items():
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(directory) + value[len(path) :]
        return value

    def start(self) -> subprocess.CompletedProcess:
        argv = [self.here(a) for a in self.container["command"] + self.container["args"]]
        assert argv[0] == "torchrun"  # on the image's PATH; here the venv's
        argv[0] = str(Path(sys.executable).parent / "torchrun")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PET_", "TORCHELASTIC_", "MASTER_", "HANSEQ_"))
            and k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK"}
        }
        services = {f"{JOB}-master-0", f"{JOB}-worker-0"}  # the operator's: this machine here
        port = str(free_port())
        for name, value in pod_env(self.job, self.replica, 0).items():
            if value in services:
                value = "127.0.0.1"
            elif value.partition(":")[0] in services:
                value = f"127.0.0.1:{port}"
            elif name.endswith("MASTER_PORT"):
                value = port
            env[name] = self.here(value)
        env |= {"HOME": str(self.home), "TMPDIR": self.here("/tmp")}
        env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts shows where its threads were
        run = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, cwd=self.workdir, env=env
        )
        assert run.returncode == 0, _outcome(run)
        # The pods' root filesystem is read-only: nothing may be written but to the mounts.
        assert not list(self.workdir.iterdir()) and not list(self.home.iterdir())
        config = Path(self.here(self.arg("--config")))
        assert [p.name for p in config.parent.iterdir()] == [config.name]
        return run

    @property
    def run_dir(self) -> Path:
        return Path(self.here(self.arg("--output-dir")))


def one_node(job: dict, nproc: int) -> dict:
    """The job shrunk to one pod with `nproc` processes."""
    job = copy.deepcopy(job)
    specs = replicas(job)
    if "Master" in specs:
        del specs["Worker"]
        job["spec"]["nprocPerNode"] = str(nproc)
    else:
        specs["Worker"]["replicas"] = 1
        job["spec"]["elasticPolicy"] |= {"minReplicas": 1, "maxReplicas": 1}
        _, container = pod_of(job, "Worker")
        for e in container["env"]:
            if e["name"] == "PET_NPROC_PER_NODE":
                e["value"] = str(nproc)
    return job


def test_the_pods_command_trains_a_bundle_with_two_cpu_processes(docs, toy_corpus, tmp_path):
    job = one_node(one(docs, "PyTorchJob"), 2)
    env = operator_env(job, "Master", 0)
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"]) == ("1", "2", "0")
    pod = LocalPod(job, "Master", toy_corpus, tmp_path)
    pod.start()
    run = pod.run_dir
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "validation"] == [3, 6]  # rank 0 only
    assert load_bundle(run / "bundle").tasks == ["reverse"]
    # A restarted container runs the same command: it resumes from the checkpoint on the runs
    # volume (here already at max_steps, so it trains nothing again) and writes the bundle.
    restarted = pod.start()
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at step 6" in restarted.stdout
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "validation"] == [3, 6]
    assert load_bundle(run / "bundle").tasks == ["reverse"]


def test_the_elastic_variant_trains_a_bundle_with_two_cpu_processes(toy_corpus, tmp_path):
    job = one_node(elastic_job(tmp_path / "elastic"), 2)
    env = operator_env(job, "Worker", 0)
    assert (env["PET_NNODES"], env["PET_RDZV_BACKEND"]) == ("1:1", "c10d")
    pod = LocalPod(job, "Worker", toy_corpus, tmp_path)
    pod.start()
    assert load_bundle(pod.run_dir / "bundle").tasks == ["reverse"]
