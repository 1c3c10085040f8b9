"""Which served model version answers a request: the one it names, else its task's default.

A request may name a bundle (``model.name``) and a version (``model.version``). A name left
empty means the bundle serving the task by default: the only bundle that has the task, or,
where several have it, the one whose policy lists the task in ``default_for``. A version left
empty means the bundle's default version, or a draw from its traffic split (a canary: 90/10
between two versions). Pure and torch-free: the table is rebuilt whenever what is served
changes, and read by every request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hanseq.service.errors import NotFound, Unimplemented
from hanseq.service.repository import ModelKey, Policy, RepositoryError, version_order


@dataclass(frozen=True)
class Routes:
    tasks: Mapping[ModelKey, Sequence[str]]  # every served model version and its tasks
    defaults: Mapping[str, str]  # task -> the bundle name that answers it by default
    split: Mapping[str, tuple[tuple[str, int], ...]]  # name -> (version, weight): a draw

    def resolve(self, task: str, name: str = "", version: str = "") -> ModelKey:
        """The model version for a request; NotFound / Unimplemented name what is served."""
        if not name:
            if task not in self.defaults:
                served = ", ".join(self.defaults) or "none"
                raise Unimplemented(f"task {task!r} is not served here; served: {served}")
            name = self.defaults[task]
        if name not in self.split:
            raise NotFound(
                "model.name", f"bundle {name!r} is not served; served: {', '.join(self.split)}"
            )
        if not version:
            version = self.draw(name)
        key = ModelKey(name, version)
        if key not in self.tasks:
            versions = ", ".join(v for v, _ in self.split[name])
            raise NotFound(
                "model.version",
                f"version {version!r} of {name} is not served; served: {versions}",
            )
        if task not in self.tasks[key]:
            raise Unimplemented(
                f"{key} does not serve task {task!r}; it serves {', '.join(self.tasks[key])}"
            )
        return key

    def draw(self, name: str) -> str:
        """The version a request naming none gets: by the traffic split's percents."""
        versions = self.split[name]
        if len(versions) == 1:
            return versions[0][0]
        pick = random.random() * sum(weight for _, weight in versions)
        for version, percent in versions:
            pick -= percent
            if pick < 0:
                return version
        return versions[-1][0]

    def default_key(self, task: str) -> ModelKey | None:
        """The model a request for ``task`` naming nothing most often gets."""
        name = self.defaults.get(task)
        if name is None:
            return None
        return ModelKey(name, max(self.split[name], key=lambda vp: vp[1])[0])


def build(tasks: Mapping[ModelKey, Sequence[str]], policies: Mapping[str, Policy]) -> Routes:
    """The routes for these served versions; a RepositoryError says what is ambiguous."""
    names = sorted({k.name for k in tasks})
    split = {n: _split(n, [k.version for k in tasks if k.name == n], policies[n]) for n in names}
    having: dict[str, list[str]] = {}
    for key, served in tasks.items():
        for task in served:
            if key.name not in having.setdefault(task, []):
                having[task].append(key.name)
    defaults = {task: _default(task, owners, policies) for task, owners in having.items()}
    for name in names:
        for task in policies[name].default_for or ():
            if name not in having.get(task, []):
                raise RepositoryError(
                    f"{name}/serving.yaml: default_for names {task!r}, which no served "
                    f"version of {name} has"
                )
    return Routes(dict(tasks), defaults, split)


def _split(name: str, versions: list[str], policy: Policy) -> tuple[tuple[str, int], ...]:
    """(version, weight) for the requests naming no version: the traffic split over the
    versions still served (one unloaded, the others share its part), else the default."""
    served = sorted(versions, key=version_order)
    split = tuple((v, p) for v, p in policy.traffic.items() if p > 0 and v in served)
    if split:
        return split
    default = policy.default if policy.default in served else served[-1]
    return ((default, 100),)


def _default(task: str, owners: list[str], policies: Mapping[str, Policy]) -> str:
    """The one owner that claims the task in its default_for, else the one owner that does
    not decline it (a default_for list without it declines it)."""
    if len(owners) == 1:
        return owners[0]
    listed = {n: policies[n].default_for for n in owners}
    claiming = [n for n, tasks in listed.items() if tasks is not None and task in tasks]
    willing = [n for n, tasks in listed.items() if tasks is None or task in tasks]
    if len(claiming) == 1:
        return claiming[0]
    if not claiming and len(willing) == 1:
        return willing[0]
    why = f"{', '.join(claiming)} all claim it" if claiming else "none claims it"
    raise RepositoryError(
        f"task {task!r} is served by {', '.join(sorted(owners))} ({why}): list it under "
        "default_for in exactly one of their serving.yaml files (models/<name>/serving.yaml; "
        "default_for: [...] there also declines the tasks it does not list)"
    )
