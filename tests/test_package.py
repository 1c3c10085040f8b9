"""The hanseq package as pip installs it."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_hanseq_installs_one_top_level_package(tmp_path):
    """The wheel holds ``hanseq`` (engine, service and the generated stubs inside) and
    nothing else at the top level: no ``engine`` or ``service`` to collide with another
    project's."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("hanseq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"hanseq"}, top
    for module in ("engine/pipeline.py", "service/servicer.py", "v1/hanseq_pb2.py"):
        assert f"hanseq/{module}" in names, module


def test_the_server_process_never_imports_torch():
    """Workers load the models; the process that serves gRPC stays light (DESIGN.md)."""
    code = (
        "import sys, hanseq.service.server, hanseq.service.cli, hanseq.service.servicer\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO)


def imports_of(path: Path) -> set[str]:
    """The hanseq modules a file imports, at any level (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hanseq."):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hanseq.")}
    return found


def test_no_import_circle_in_the_package():
    package = REPO / "hanseq"
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts): p
        for p in package.rglob("*.py")
        if "v1" not in p.parts and p.name != "__init__.py"
    }
    graph = {m: imports_of(p) & modules.keys() for m, p in modules.items()}

    def reaches_itself(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                return True
            if module not in seen:
                seen.add(module)
                todo += graph[module]
        return False

    circles = sorted(m for m in graph if reaches_itself(m))
    assert not circles, circles


def test_the_architecture_map_names_every_module():
    """ARCHITECTURE.md is kept true: a module added or renamed is added to the map."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for layer in ("engine", "service"):
        for path in sorted((REPO / "hanseq" / layer).glob("*.py")):
            if path.name != "__init__.py":
                assert f"  {path.name}" in text, f"ARCHITECTURE.md does not map {layer}/{path.name}"
