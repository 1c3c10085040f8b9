"""Derive a JSON Schema for Kubeflow's PyTorchJob (kubeflow.org/v1) from the Training
Operator's Python SDK, as published on PyPI (kubeflow-training).

The SDK's model classes are generated (OpenAPI Generator) from the operator's OpenAPI
document; each one says, in `openapi_types` and `attribute_map`, which fields the type has,
their JSON names and their types, and its setters say which fields are required and what each
means. This script reads them from the wheel or sdist with `ast` (no SDK code runs, nothing is
installed) and writes one JSON Schema (draft 2020-12) to stdout:

    pip download kubeflow-training==1.9.4 --no-deps -d /tmp/kft
    python deploy/k8s/training/schema/derive.py /tmp/kft/kubeflow_training-1.9.4-py3-none-any.whl \
        > deploy/k8s/training/schema/pytorchjob-kubeflow-v1.json

Every Kubeflow type is strict (`additionalProperties: false`: an unknown field is an error).
The Kubernetes types they embed (the pod template, object metadata, HPA metrics, label
selectors, quantities) are `$ref`s into the Kubernetes API schemas that kubernetes-validate
ships (`https://kubernetes.io/api/_definitions.json`); the tests resolve them against its strict
schemas of the release they validate the rest with. Nothing here is hand-written except that
mapping of the SDK's names of Kubernetes types to the API's, and the job's apiVersion and kind,
which come from the SDK's constants.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tarfile
import zipfile
from pathlib import PurePosixPath

MODELS = "kubeflow/training/models/"
ROOT = "KubeflowOrgV1PyTorchJob"
K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"
# The SDK names Kubernetes types as the kubernetes Python client does; the API's names:
KUBERNETES = {
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1PodTemplateSpec": "io.k8s.api.core.v1.PodTemplateSpec",
    "V1LabelSelector": "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "K8sIoApiAutoscalingV2MetricSpec": "io.k8s.api.autoscaling.v2.MetricSpec",
    "Quantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "float": {"type": "number"},
    "datetime": {"type": "string", "format": "date-time"},
    "object": {},
}


def sources(archive: str) -> tuple[str, dict[str, str]]:
    """The SDK's versions and its modules (file name -> source), from a wheel or sdist."""
    files: dict[str, bytes] = {}
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            files = {n: z.read(n) for n in z.namelist()}
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                f = t.extractfile(m) if m.isfile() else None
                if f is not None:
                    files[m.name.split("/", 1)[1]] = f.read()
    models = {
        PurePosixPath(n).name: b.decode()
        for n, b in files.items()
        if n.startswith(MODELS) and n.endswith(".py") and not n.endswith("__init__.py")
    }
    constants = files["kubeflow/training/constants/constants.py"].decode()
    (metadata,) = [
        b for n, b in files.items() if n == "PKG-INFO" or n.endswith(".dist-info/METADATA")
    ]
    package = re.search(r"^Version: (\S+)$", metadata.decode(), flags=re.M)
    document = re.search(r"The version of the OpenAPI document: (\S+)", next(iter(models.values())))
    assert package and document, "no package version, or no OpenAPI document version"
    return f"{package.group(1)}, OpenAPI document {document.group(1)}", {
        "constants.py": constants,
        **models,
    }


def literal(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def classes(files: dict[str, str]) -> dict[str, ast.ClassDef]:
    """Every generated class, by name."""
    found = {}
    for source in files.values():
        (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
        found[cls.name] = cls
    return found


def model(cls: ast.ClassDef) -> dict:
    """One generated class's schema."""
    types, names = literal(cls, "openapi_types"), literal(cls, "attribute_map")
    properties, required = {}, []
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef) or node.name not in types:
            continue
        setter = any(
            isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list
        )
        if not setter:
            continue
        doc = ast.get_docstring(node) or ""
        text = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
        text = text.split(":param", 1)[0].replace("# noqa: E501", "").strip()
        schema = of_type(types[node.name])
        if text:
            schema = {**schema, "description": " ".join(text.split())}
        properties[names[node.name]] = schema
        # Generated setters refuse None for a required field.
        checks = ast.unparse(node)
        if re.search(rf"client_side_validation and {node.name} is None", checks):
            required.append(names[node.name])
    assert set(properties) == set(names.values()), cls.name
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = sorted(required)
    return schema


def of_type(name: str) -> dict:
    if m := re.fullmatch(r"list\[(.+)\]", name):
        return {"type": "array", "items": of_type(m.group(1))}
    if m := re.fullmatch(r"dict\(str, (.+)\)", name):
        return {"type": "object", "additionalProperties": of_type(m.group(1))}
    if name in SCALARS:
        return dict(SCALARS[name])
    if name in KUBERNETES:
        return {"$ref": K8S + KUBERNETES[name]}
    if name.startswith("KubeflowOrgV1"):
        return {"$ref": f"#/$defs/{name}"}
    raise ValueError(f"a type this script does not know: {name}")


def closure(found: dict[str, ast.ClassDef]) -> dict[str, dict]:
    """The definitions the PyTorchJob reaches, and no others (TFJob and the rest left out)."""
    seen: dict[str, dict] = {}
    todo = [ROOT]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = model(found[name])
        todo += re.findall(r'"#/\$defs/(\w+)"', json.dumps(seen[name]))
    return dict(sorted(seen.items()))


def main(archive: str) -> None:
    version, files = sources(archive)
    constants = ast.parse(files.pop("constants.py"))
    # API_VERSION is f"{GROUP}/{VERSION}" there.
    api_version = f"{literal(constants, 'GROUP')}/{literal(constants, 'VERSION')}"
    kind = literal(constants, "PYTORCHJOB_KIND")
    definitions = closure(classes(files))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} ({api_version}) of the Kubeflow Training Operator",
        "description": (
            "Derived by deploy/k8s/training/schema/derive.py from the model classes of the "
            f"Training Operator's Python SDK on PyPI, kubeflow-training {version} "
            "(Apache-2.0). Kubernetes types are references into the Kubernetes API schemas."
        ),
        "allOf": [{"$ref": f"#/$defs/{ROOT}"}],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}},
        "required": ["apiVersion", "kind"],
        "$defs": definitions,
    }
    json.dump(schema, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
