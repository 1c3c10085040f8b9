"""deploy/: the images and the Kubernetes manifests, checked offline (no cluster, no Docker).

Overlays are rendered by the real kustomize (`kubectl kustomize`; `make test` installs
kubectl where missing) and every object is validated against the Kubernetes API schemas of a
recent release (kubernetes-validate, strict: unknown fields are errors). The rest checks that
the pieces agree with each other and with the service: ports, probes, settings names, labels.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from hanseq.service.lifecycle import health_names
from hanseq.service.settings import FIELDS, env_name
from tests.conftest import REPO
from tests.test_deploy_monitoring import exported

K8S = REPO / "deploy" / "k8s"
DOCKER = REPO / "deploy" / "docker"
KUBERNETES = "1.33"  # a recent release; kubernetes-validate ships its schemas
CRDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus operator's, not Kubernetes'
SETTINGS = {env_name(name) for name in FIELDS}


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed; `make test` installs it"
    run = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def server(docs: list[dict]) -> dict:
    deployment = one(docs, "Deployment", "hanseq")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]]
    return container


def settings_map(docs: list[dict]) -> dict[str, str]:
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "hanseq-settings" in d["metadata"]["name"]
    ]
    return cm["data"]


# -- schemas ---------------------------------------------------------------------------------


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_every_rendered_object_validates(overlay):
    _, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] not in CRDS:
            validate(doc)


@pytest.mark.parametrize("path", sorted(K8S.glob("base/*.yaml")), ids=lambda p: p.name)
def test_every_base_manifest_validates(path):
    if path.name == "kustomization.yaml":
        return
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] not in CRDS:
            validate(doc)


def test_the_validator_does_reject_a_broken_manifest():
    docs = kustomize(K8S / "overlays" / "cpu")
    broken = one(docs, "Deployment", "hanseq")
    broken["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


# -- the server's pod ------------------------------------------------------------------------


def test_probes_use_the_grpc_port_and_the_health_service(overlay):
    _, docs = overlay
    container = server(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_map(docs)
    assert ports["grpc"] == int(settings["HANSEQ_PORT"])
    assert ports["metrics"] == int(settings["HANSEQ_METRICS_PORT"])
    assert settings["HANSEQ_HOST"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == ports["grpc"]
        assert grpc_probe.get("service", "") in health_names([])  # "" = the whole server
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # model loading


def test_shutdown_gives_the_drain_its_time(overlay):
    _, docs = overlay
    pod = one(docs, "Deployment", "hanseq")["spec"]["template"]["spec"]
    sleep = int(server(docs)["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(settings_map(docs)["HANSEQ_GRACE_PERIOD_S"])
    assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 5


def test_every_container_is_locked_down(overlay):
    _, docs = overlay
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]


def test_pods_spread_over_nodes(overlay):
    _, docs = overlay
    spread = one(docs, "Deployment", "hanseq")["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in spread["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys


def test_env_names_are_settings_that_exist(overlay):
    _, docs = overlay
    used = set(settings_map(docs))
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            used |= {e["name"] for e in container.get("env", []) if e["name"].startswith("HANSEQ_")}
    for dockerfile in DOCKER.glob("Dockerfile*"):
        used |= set(re.findall(r"\b(HANSEQ_[A-Z_0-9]+)=", dockerfile.read_text()))
    assert used and used <= SETTINGS, used - SETTINGS


def test_only_the_gpu_overlay_asks_for_a_gpu(overlay):
    name, docs = overlay
    container = server(docs)
    pod = one(docs, "Deployment", "hanseq")["spec"]["template"]["spec"]
    if name == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod["nodeSelector"]
        assert settings_map(docs)["HANSEQ_DEVICES"] == "auto"
    else:
        assert "nvidia" not in yaml.safe_dump(docs)
        assert settings_map(docs)["HANSEQ_DEVICES"] == "cpu"


# -- services, scaling, Redis, monitoring ----------------------------------------------------


def test_a_headless_service_for_clients_and_a_clusterip_one_for_metrics(overlay):
    _, docs = overlay
    labels = one(docs, "Deployment", "hanseq")["spec"]["template"]["metadata"]["labels"]
    grpc_service = one(docs, "Service", "hanseq")["spec"]
    metrics = one(docs, "Service", "hanseq-metrics")["spec"]
    assert grpc_service["clusterIP"] == "None" and metrics.get("type", "ClusterIP") == "ClusterIP"
    for spec, port in ((grpc_service, "grpc"), (metrics, "metrics")):
        assert spec["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in spec["ports"]] == [port]


def test_autoscaling_on_queue_depth_and_utilisation(overlay):
    name, docs = overlay
    hpa = one(docs, "HorizontalPodAutoscaler", "hanseq")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "hanseq" and hpa["minReplicas"] >= 2
    names = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert "hanseq_queue_depth" in names and "hanseq_queue_depth" in exported()
    if name == "cpu":
        assert any(
            m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"]
        )
    else:
        assert "DCGM_FI_DEV_GPU_UTIL" in names
    pdb = one(docs, "PodDisruptionBudget", "hanseq")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= server_labels(docs).items()


def server_labels(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "hanseq")["spec"]["template"]["metadata"]["labels"]


def test_redis_has_a_password_a_memory_cap_and_only_hanseq_as_caller(overlay):
    _, docs = overlay
    redis = one(docs, "Deployment", "hanseq-redis")["spec"]["template"]
    (container,) = redis["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (secret_env,) = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    server_env = {e["name"]: e for e in server(docs)["env"]}
    assert secret_env["valueFrom"] == server_env["HANSEQ_REDIS_PASSWORD"]["valueFrom"]
    assert "memory" in container["resources"]["limits"]
    policy = one(docs, "NetworkPolicy", "hanseq-redis")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis["metadata"]["labels"].items()
    (allowed,) = policy["ingress"]
    (source,) = allowed["from"]
    assert source["podSelector"]["matchLabels"].items() <= server_labels(docs).items()
    service = one(docs, "Service", "hanseq-redis")
    assert f"redis://{service['metadata']['name']}:6379/" in settings_map(docs)["HANSEQ_REDIS_URL"]


def test_monitoring_is_wired_in(overlay):
    _, docs = overlay
    monitor = one(docs, "ServiceMonitor", "hanseq")["spec"]
    metrics = one(docs, "Service", "hanseq-metrics")
    assert monitor["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [
        p["name"] for p in metrics["spec"]["ports"]
    ]
    rule = one(docs, "PrometheusRule", "hanseq")
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts  # the same rules as the plain Prometheus file
    (dashboard,) = [d for d in docs if "hanseq-grafana-dashboard" in d["metadata"]["name"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (K8S / "base" / "grafana" / "hanseq-dashboard.json").read_text()
    assert dashboard["data"]["hanseq-dashboard.json"] == shipped


# -- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_what_exists_and_serve_like_make_serve(name):
    text = (DOCKER / name).read_text()
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M)
    assert sources
    for line in sources:
        for source in line.split():
            assert (REPO / source).exists(), source
    assert re.search(r'^ENTRYPOINT \["hanseq", "serve"\]$', text, flags=re.M)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve:.*\n\t\$\(BIN\)/hanseq serve$", makefile, flags=re.M)
    assert re.search(r"^USER 10001$", text, flags=re.M)  # the manifests' runAsUser
    assert text.count("FROM ") >= 2  # multi-stage: no build tools in the image
    assert "torch==2.13.0" in text and "grpcio-tools==1.85.1" in text  # pyproject's pins
    kept = (REPO / ".dockerignore").read_text()
    for source in {s for line in sources for s in line.split()}:
        assert f"!{source.rstrip('/')}" in kept or f"!{source}/" in kept, source
