"""deploy/: the images and the Kubernetes manifests, checked offline (no cluster, no Docker).

Overlays are rendered by the real kustomize (`kubectl kustomize`; `make test` installs
kubectl where missing) and every object is validated against the Kubernetes API schemas of a
recent release (kubernetes-validate, strict: unknown fields are errors). The rest checks that
the pieces agree with each other and with the service: ports, probes, settings names, labels,
network policy, image pins; and that the docs name what the manifests create (the Secret, the
service's DNS name, every path into deploy/), running their kustomize snippets where they
show one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from hanseq.service.lifecycle import LIVENESS, health_names
from hanseq.service.servicer import SERVICE
from hanseq.service.settings import FIELDS, env_name
from tests.conftest import REPO
from tests.test_deploy_monitoring import exported

K8S = REPO / "deploy" / "k8s"
DOCKER = REPO / "deploy" / "docker"
DEPLOY_README = REPO / "deploy" / "README.md"
KUBERNETES = "1.33"  # a recent release; kubernetes-validate ships its schemas
CRDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus operator's, not Kubernetes'
SETTINGS = {env_name(name) for name in FIELDS}


def render(path: Path) -> tuple[list[dict], str]:
    """The objects `kubectl kustomize` renders, and what it printed on stderr."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed; `make test` installs it"
    run = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc], run.stderr


def assert_locked_down(pod: dict) -> None:
    """Non-root, no service account token, read-only root, no privilege, no capabilities."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def kustomize(path: Path) -> list[dict]:
    return render(path)[0]


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


# -- kustomize: current fields, stable selectors -----------------------------------------------


@pytest.mark.parametrize("path", ["base", "overlays/cpu", "overlays/gpu"])
def test_rendering_prints_no_warning(path):
    # Deprecated fields (bases, patchesStrategicMerge, commonLabels...) warn on stderr, and a
    # later kustomize drops them.
    _, stderr = render(K8S / path)
    assert stderr == ""


def selectors(doc: dict) -> list[dict]:
    """The labels every selector of an object asks for (matchLabels; a Service's selector)."""
    spec = doc.get("spec", {})
    if doc["kind"] == "Service":
        return [spec.get("selector", {})]
    found = []
    if doc["kind"] == "NetworkPolicy":
        found.append(spec["podSelector"])
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                found += [peer[k] for k in ("podSelector", "namespaceSelector") if k in peer]
    elif "selector" in spec:
        found.append(spec["selector"])
    if doc["kind"] == "Deployment":
        pod = spec["template"]["spec"]
        found += [c["labelSelector"] for c in pod.get("topologySpreadConstraints", [])]
    return [s.get("matchLabels", {}) for s in found]


# Pinned: a Deployment's selector cannot change once applied, so a change here is a migration
# (deploy/README.md), not an edit.
SELECTORS = {
    "hanseq": {"app.kubernetes.io/name": "hanseq", "app.kubernetes.io/component": "server"},
    "hanseq-cache": {
        "app.kubernetes.io/name": "valkey",
        "app.kubernetes.io/instance": "hanseq-cache",
    },
}


def test_selectors_are_stable_and_labels_stay_out_of_them(overlay):
    _, docs = overlay
    for doc in docs:
        # The project-wide label is on every object and pod, in no selector.
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hanseq", doc["kind"]
        for selector in selectors(doc):
            assert "app.kubernetes.io/part-of" not in selector, (doc["kind"], selector)
    for name, selector in SELECTORS.items():
        deployment = one(docs, "Deployment", name)["spec"]
        assert deployment["selector"] == {"matchLabels": selector}
        template = deployment["template"]["metadata"]["labels"]
        assert selector.items() <= template.items()
        assert template["app.kubernetes.io/part-of"] == "hanseq"


# -- the server's pod ------------------------------------------------------------------------


def test_probes_use_the_grpc_port_and_the_health_service(overlay):
    _, docs = overlay
    container = server(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_map(docs)
    assert ports["grpc"] == int(settings["HANSEQ_PORT"])
    assert ports["metrics"] == int(settings["HANSEQ_METRICS_PORT"])
    assert settings["HANSEQ_HOST"] == "0.0.0.0"
    # Startup and readiness ask whether it serves: the service's health name.
    for probe in ("startupProbe", "readinessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == ports["grpc"]
        assert grpc_probe["service"] == SERVICE and SERVICE in health_names([])
        assert container[probe]["timeoutSeconds"] >= 2  # the 1 s default fails a busy server
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # model loading
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] <= 10 and readiness["failureThreshold"] >= 2


def test_liveness_asks_only_whether_the_process_lives(overlay):
    _, docs = overlay
    container = server(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = container["livenessProbe"]
    # Every name of health_names goes NOT_SERVING while draining or without a worker: a
    # liveness probe on one of them kills a pod for doing its job. hanseq.liveness stays
    # SERVING while the process answers (service/lifecycle.py).
    assert liveness["grpc"] == {"port": ports["grpc"], "service": LIVENESS}
    assert LIVENESS not in health_names(["translate"])
    # Not before a drain (which may close the port) has had all its time.
    pod = one(docs, "Deployment", "hanseq")["spec"]["template"]["spec"]
    tolerated = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert tolerated > pod["terminationGracePeriodSeconds"]


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
        assert_locked_down(pod)
        for container in pod["containers"]:
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


def test_pods_log_json_lines_and_the_documented_tracing_settings_exist(overlay):
    _, docs = overlay
    assert settings_map(docs)["HANSEQ_LOG_FORMAT"] == "json"  # for the log pipeline
    readme = DEPLOY_README.read_text()
    documented = set(re.findall(r"\b(HANSEQ_[A-Z_0-9]+)=", readme))
    assert {"HANSEQ_OTLP_ENDPOINT", "HANSEQ_TRACE_SAMPLE_RATIO"} <= documented <= SETTINGS


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


# -- services, scaling, the cache, monitoring ------------------------------------------------


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
        assert "hanseq_gpu_utilization_ratio" in names
    pdb = one(docs, "PodDisruptionBudget", "hanseq")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= server_labels(docs).items()


def server_labels(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "hanseq")["spec"]["template"]["metadata"]["labels"]


def cache(docs: list[dict]) -> tuple[dict, dict]:
    """The cache's pod spec and its one container."""
    pod = one(docs, "Deployment", "hanseq-cache")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def mounted(pod: dict, container: dict, path: str) -> tuple[dict, str]:
    """The volume that holds the file at `path` in the container, and the file's name in it."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        directory = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(directory):
            return volumes[mount["name"]], path[len(directory) :]
    raise AssertionError(f"nothing mounted at {path}")


def test_the_cache_is_valkey_configured_from_mounted_files(overlay):
    _, docs = overlay
    pod, container = cache(docs)
    # Valkey, not Redis (whose licence since 7.4 is not open source: deploy/README.md).
    assert container["image"].startswith("valkey/valkey:")
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert not [i for i in images if re.match(r"(docker\.io/)?(library/)?redis[:@]", i)]
    binary, config_path = container["args"]
    assert binary == "valkey-server"
    volume, name = mounted(pod, container, config_path)
    (config_map,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    directives = dict(
        line.split(None, 1)
        for line in config_map["data"][name].splitlines()
        if line.strip() and not line.startswith("#")
    )
    # A cache, not a database: bounded, least recently used first, nothing on disk.
    assert directives["maxmemory-policy"] == "allkeys-lru"
    assert directives["maxmemory"] and "memory" in container["resources"]["limits"]
    assert directives["save"] == '""' and directives["appendonly"] == "no"
    assert "requirepass" not in directives  # the password is not in a ConfigMap
    # ... but in a file of the Secret, which the config includes.
    secret, key = mounted(pod, container, directives["include"])
    assert [i["key"] for i in secret["secret"]["items"]] == [key]
    server_env = {e["name"]: e for e in server(docs)["env"]}
    password = server_env["HANSEQ_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret["secret"]["secretName"] == password["name"]  # one Secret for both ends
    service = one(docs, "Service", "hanseq-cache")
    (port,) = service["spec"]["ports"]
    url = settings_map(docs)["HANSEQ_REDIS_URL"]
    assert url.startswith(f"redis://{service['metadata']['name']}:{port['port']}/")


def test_no_command_line_carries_a_secret(overlay):
    # Arguments show in `ps` on the node and in the pod spec to anyone who may read pods.
    _, docs = overlay
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            words = " ".join(container.get("command", []) + container.get("args", []))
            assert "$(" not in words and not re.search(r"(?i)requirepass|password", words)
            secret_env = [
                e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            ]
            if container["name"] != "hanseq":  # hanseq reads HANSEQ_REDIS_PASSWORD itself
                assert not secret_env, container["name"]


def test_the_readme_creates_the_secret_the_manifests_read():
    docs = kustomize(K8S / "overlays" / "gpu")
    pod, container = cache(docs)
    wanted: dict[str, set[str]] = {}
    for volume in pod["volumes"]:
        if "secret" in volume:
            keys = {i["key"] for i in volume["secret"]["items"]}
            wanted.setdefault(volume["secret"]["secretName"], set()).update(keys)
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    wanted.setdefault(ref["name"], set()).add(ref["key"])
    commands = DEPLOY_README.read_text().replace("\\\n", " ").splitlines()  # one per line
    created = [line for line in commands if "create secret generic" in line]
    assert created  # the first deployment's, and the upgrade's
    for command in created:
        (name,) = re.findall(r"create secret generic ([\w.-]+)", command)
        literals = dict(re.findall(r'--from-literal=([\w.-]+)=("[^"]*"|\S+)', command))
        assert {name: set(literals)} == wanted
        (auth,) = [v.strip('"') for k, v in literals.items() if k.endswith(".conf")]
        assert auth.startswith("requirepass $")  # from the same value as the password


def policy_for(docs: list[dict], labels: dict) -> dict:
    """The one NetworkPolicy whose podSelector picks pods with these labels."""
    (policy,) = [
        d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert policy["policyTypes"] == ["Ingress"]
    return policy


def rules_by_port(policy: dict) -> dict[int, list[dict]]:
    rules: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        # A rule without ports, or without peers, opens every port, or to everyone.
        assert rule.get("ports") and rule.get("from"), rule
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            rules.setdefault(port["port"], []).extend(rule["from"])
    return rules


CLIENT = {"hanseq.io/client": "true"}


def test_network_policy_lets_only_labelled_clients_and_prometheus_in(overlay):
    _, docs = overlay
    ports = {p["name"]: p["containerPort"] for p in server(docs)["ports"]}
    rules = rules_by_port(policy_for(docs, server_labels(docs)))
    assert set(rules) == {ports["grpc"], ports["metrics"]}  # nothing else is open
    for peer in rules[ports["grpc"]]:
        assert "ipBlock" not in peer
        # The client label on the namespace, or on the pod (in any namespace).
        if "podSelector" in peer:
            assert peer["podSelector"] == {"matchLabels": CLIENT}
            assert peer.get("namespaceSelector", {}) == {}
        else:
            assert peer["namespaceSelector"] == {"matchLabels": CLIENT}
    (prometheus,) = rules[ports["metrics"]]
    # Both halves: Prometheus's pods, in Prometheus's namespace; not any pod of that namespace,
    # nor a pod named so anywhere.
    assert prometheus["namespaceSelector"]["matchLabels"]
    assert prometheus["podSelector"]["matchLabels"]
    # The labels to put on clients, and the ones Prometheus must carry, are documented.
    readme = DEPLOY_README.read_text()
    for selector in (
        CLIENT,
        prometheus["namespaceSelector"]["matchLabels"],
        prometheus["podSelector"]["matchLabels"],
    ):
        for key, value in selector.items():
            assert f"{key}: {value}" in readme or f'{key}: "{value}"' in readme, key


def test_network_policy_lets_only_hanseq_reach_the_cache(overlay):
    _, docs = overlay
    labels = one(docs, "Deployment", "hanseq-cache")["spec"]["template"]["metadata"]["labels"]
    _, container = cache(docs)
    rules = rules_by_port(policy_for(docs, labels))
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert set(rules) == {port}
    (peer,) = rules[port]
    assert set(peer) == {"podSelector"}  # no namespaceSelector: this namespace only
    assert peer["podSelector"]["matchLabels"].items() <= server_labels(docs).items()
    assert peer["podSelector"]["matchLabels"] == SELECTORS["hanseq"]


def readme_kustomization(marker: str, tmp_path: Path, overlay: str = "gpu") -> list[dict]:
    """Render the kustomization that deploy/README.md shows (its ```yaml block containing
    `marker`), on top of an overlay, as an operator would write it next to the overlays."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    kustomization = yaml.safe_load(block)
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [f"../{overlay}"]
    kustomization["resources"] = [os.path.relpath(K8S / "overlays" / overlay, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs, stderr = render(tmp_path)
    assert stderr == ""
    return docs


def test_the_readme_shows_how_to_let_another_prometheus_in(tmp_path):
    before = kustomize(K8S / "overlays" / "gpu")
    after = readme_kustomization("kind: NetworkPolicy", tmp_path)
    ports = {p["name"]: p["containerPort"] for p in server(before)["ports"]}

    def scrapers(docs):
        return rules_by_port(policy_for(docs, server_labels(docs)))[ports["metrics"]]

    assert scrapers(after) != scrapers(before)
    (peer,) = scrapers(after)
    assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
    # Only the Prometheus peer changed.
    grpc = rules_by_port(policy_for(after, server_labels(after)))[ports["grpc"]]
    assert grpc == rules_by_port(policy_for(before, server_labels(before)))[ports["grpc"]]


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


VERSION = re.compile(r":(?:[\w.-]*[^\d.])?\d+\.\d+\.\d+(?:-[\w.]+)?$")  # a full x.y.z
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_images_are_pinned_to_versions(overlay):
    # A tag such as `7.4` or `cpu` moves with every release pushed under it; a full version
    # is what was tested (and a digest what cannot change at all).
    name, docs = overlay
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            image = container["image"]
            assert not image.endswith(":latest"), image
            assert VERSION.search(image) or DIGEST.search(image), image
    # The base names the image only; each overlay sets where it lives and its version, the
    # one of its own flavour (the gpu overlay runs the gpu build).
    (base,) = [
        c["image"]
        for d in kustomize(K8S / "base")
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "hanseq"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert ":" not in base and "@" not in base
    overlay_file = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
    (image,) = [i for i in overlay_file["images"] if i["name"] == base]
    assert image["newTag"].startswith(f"{name}-")
    assert server(docs)["image"] == f"{image['newName']}:{image['newTag']}"


def test_the_readme_shows_a_digest_pin(tmp_path):
    docs = readme_kustomization("digest: sha256:", tmp_path)
    image = server(docs)["image"]
    assert DIGEST.search(image) and image.startswith("registry.example.com/hanseq")
    _, valkey = cache(docs)
    assert DIGEST.search(valkey["image"]), valkey["image"]


# -- the docs --------------------------------------------------------------------------------


SKIP_DIRS = {"build", "runs", "models", "node_modules", "__pycache__"}
TEXT = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".sh"}


def repo_text_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        for file in files:
            path = Path(root) / file
            if path.suffix in TEXT or file.startswith(("Dockerfile", "Makefile")):
                yield path


def test_the_docs_spell_the_service_dns_name_the_manifests_make():
    docs = kustomize(K8S / "overlays" / "gpu")
    service = one(docs, "Service", "hanseq")["metadata"]
    name = f"{service['name']}.{service['namespace']}.svc.cluster.local"
    wrong = {}
    for path in repo_text_files():
        for found in re.findall(
            r"\b[a-z0-9-]+\.[a-z0-9-]+\.svc(?:\.cluster\.local)?\b",
            path.read_text(errors="replace"),
        ):
            if found not in (name, name.removesuffix(".cluster.local")):
                wrong.setdefault(str(path.relative_to(REPO)), set()).add(found)
    assert not wrong, f"the Service is {name}: {wrong}"


def deploy_paths() -> set[str]:
    """Every path into deploy/ that README.md, deploy/README.md and ARCHITECTURE.md name."""
    paths = set()
    for doc in ("README.md", "deploy/README.md", "ARCHITECTURE.md"):
        text = (REPO / doc).read_text()
        paths |= set(re.findall(r"(?<![\w/.-])(deploy/[\w./-]*[\w/])", text))
    # deploy/README.md also names them from deploy/ itself: `k8s/base/...`, `docker/`.
    for found in re.findall(r"`((?:docker|k8s|prometheus)/[\w./-]*)`", DEPLOY_README.read_text()):
        paths.add(f"deploy/{found}")
    # README's layout names what deploy/ holds, on the line of deploy/ and its continuation.
    (layout,) = re.findall(
        r"^deploy/ +(.*(?:\n {4,}\S.*)*)$", (REPO / "README.md").read_text(), flags=re.M
    )
    paths |= {f"deploy/{p}" for p in re.findall(r"(?<![\w/.-])([\w.-]+/[\w./-]*)", layout)}
    return paths


def test_every_path_into_deploy_the_docs_name_exists():
    paths = deploy_paths()
    assert "deploy/k8s/base/grafana/hanseq-dashboard.json" in paths  # the scan finds paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing
