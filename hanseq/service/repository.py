"""The model repository: which bundles and versions the models directory holds, and which of
them to serve (torch-free: the server reads only names, manifests and policies).

Two layouts, side by side in one directory:

    models/hanseq-multitask/            a bundle (bundle.json inside): one version, the one
                                        its manifest records; named by its manifest's id
    models/keyphrase/                   a bundle name: its versions are the directories
        serving.yaml                    inside that hold a bundle.json, and the optional
        20261201-133120/                policy says which of them are served (Triton's
        20261203-090000/                version_policy), which answers by default, and an
                                        optional traffic split for a canary

``HANSEQ_MODELS`` may also point at one bundle directly. A version is the name of its
directory (or the manifest's version for a bundle not in a version directory): the name a
request gives in ``model.version`` and a response reports in ``model_version``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hanseq.engine.manifest import MANIFEST

POLICY = "serving.yaml"


class RepositoryError(ValueError):
    """The models directory or a policy in it is not usable; the message names the file."""


@dataclass(frozen=True, order=True)
class ModelKey:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Policy:
    """models/<name>/serving.yaml. Every key is optional."""

    versions: str | tuple[str, ...] = "latest"  # latest | all | the versions to serve
    latest: int = 1  # with versions: latest, how many of the newest
    default: str = ""  # the version a request that names none gets ("": the newest served)
    traffic: dict[str, int] = field(default_factory=dict)  # version -> percent (a canary)
    # Where other bundles have a task too: the tasks this one answers when a request names
    # no model (None: any it has; an empty list: none).
    default_for: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Model:
    """One version of one bundle, as found on disk."""

    key: ModelKey
    path: Path
    tasks: tuple[str, ...]  # as its manifest lists them


@dataclass(frozen=True)
class Repository:
    """What to serve: every chosen model version, and each bundle name's policy."""

    models: dict[ModelKey, Model]
    policies: dict[str, Policy]
    root: Path = Path(".")

    def load_one(self, name: str, version: str) -> Model | None:
        """Version ``version`` of bundle ``name`` if it is on disk, whatever the policy."""
        if ModelKey(name, version) in self.models:
            return self.models[ModelKey(name, version)]
        path = self.root / name / version
        if not (path / MANIFEST).is_file() or (self.root / name / MANIFEST).is_file():
            return None
        return _model(ModelKey(name, version), path, _manifest(path))


def version_order(version: str) -> list[Any]:
    """Natural order: 2 < 10, 20261201-133120 < 20261203-090000."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version)]


def scan(path: Path) -> Repository:
    """The models ``path`` holds, each bundle's versions chosen by its policy."""
    if (path / MANIFEST).is_file():
        model = _flat(path)
        return Repository({model.key: model}, {model.key.name: Policy()}, path)
    if not path.is_dir():
        raise RepositoryError(f"models path {path} does not exist")
    models: dict[ModelKey, Model] = {}
    policies: dict[str, Policy] = {}
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if (child / MANIFEST).is_file():  # one version; a serving.yaml may say default_for
            found = [_flat(child)]
            policy = read_policy(child / POLICY) if (child / POLICY).is_file() else Policy()
        else:
            found, policy = _versioned(child)
        if not found:
            continue
        name = found[0].key.name
        if name in policies:
            raise RepositoryError(
                f"{child}: bundle name {name!r} is served from another directory too; "
                "put its versions side by side in models/<name>/<version>/"
            )
        models.update((m.key, m) for m in found)
        policies[name] = policy
    if not models:
        raise RepositoryError(
            f"no bundle in {path}: expected <bundle>/{MANIFEST} or <name>/<version>/{MANIFEST}"
        )
    return Repository(models, policies, path)


def _flat(path: Path) -> Model:
    manifest = _manifest(path)
    return _model(ModelKey(str(manifest["id"]), str(manifest["version"])), path, manifest)


def _model(key: ModelKey, path: Path, manifest: dict[str, Any]) -> Model:
    return Model(key, path, tuple(manifest.get("tasks", {})))


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        str(manifest["id"]), str(manifest["version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RepositoryError(f"{path / MANIFEST}: not a bundle manifest ({e})") from None
    return manifest


def _versioned(directory: Path) -> tuple[list[Model], Policy]:
    """models/<name>/: its version directories, chosen by serving.yaml."""
    on_disk = sorted(
        (p.name for p in directory.iterdir() if (p / MANIFEST).is_file()), key=version_order
    )
    policy = read_policy(directory / POLICY) if (directory / POLICY).is_file() else Policy()
    if not on_disk:
        if (directory / POLICY).is_file():
            raise RepositoryError(f"{directory}: a {POLICY} but no version directory with a bundle")
        return [], policy
    models = [  # a damaged manifest is named now, not in a worker
        _model(ModelKey(directory.name, v), directory / v, _manifest(directory / v))
        for v in _choose(directory, on_disk, policy)
    ]
    return models, policy


def _choose(directory: Path, on_disk: list[str], policy: Policy) -> list[str]:
    where = directory / POLICY
    if policy.versions == "all":
        chosen = on_disk
    elif policy.versions == "latest":
        chosen = on_disk[-policy.latest :]
    else:
        missing = [v for v in policy.versions if v not in on_disk]
        if missing:
            raise RepositoryError(
                f"{where}: versions {missing} are not in {directory} (it holds {on_disk})"
            )
        chosen = sorted(policy.versions, key=version_order)
    for version in [policy.default, *policy.traffic]:
        if version and version not in chosen:
            raise RepositoryError(
                f"{where}: version {version!r} is named but not served (served: {chosen})"
            )
    return chosen


def read_policy(path: Path) -> Policy:
    """serving.yaml -> Policy; a RepositoryError names the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RepositoryError(f"{path}: cannot read it ({e})") from None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: must be a mapping of policy keys")
    unknown = set(raw) - {"versions", "latest", "default", "traffic", "default_for"}
    if unknown:
        raise RepositoryError(
            f"{path}: unknown keys {sorted(unknown)}; "
            "known: versions, latest, default, traffic, default_for"
        )
    return Policy(
        versions=_versions(path, raw.get("versions", "latest")),
        latest=_positive(path, "latest", raw.get("latest", 1)),
        default=str(raw.get("default", "") or ""),
        traffic=_traffic(path, raw.get("traffic") or {}),
        default_for=_tasks(path, "default_for", raw.get("default_for")),
    )


def _versions(path: Path, value: Any) -> str | tuple[str, ...]:
    if value in ("latest", "all"):
        return str(value)
    if isinstance(value, list) and value:
        return tuple(str(v) for v in value)
    raise RepositoryError(
        f"{path}: versions must be latest, all or a list of version names (got {value!r})"
    )


def _positive(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RepositoryError(f"{path}: {key} must be a whole number >= 1 (got {value!r})")
    return value


def _traffic(path: Path, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise RepositoryError(f"{path}: traffic must map versions to percents")
    split = {}
    for version, percent in value.items():
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
            raise RepositoryError(
                f"{path}: traffic[{version}] must be a whole percent 0-100 (got {percent!r})"
            )
        split[str(version)] = percent
    if split and sum(split.values()) != 100:
        raise RepositoryError(
            f"{path}: traffic percents must add up to 100 (they add up to {sum(split.values())})"
        )
    return split


def _tasks(path: Path, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise RepositoryError(f"{path}: {key} must be a list of tasks (got {value!r})")
    return tuple(str(t) for t in value)
