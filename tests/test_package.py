"""The hanseq package as pip installs it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

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
