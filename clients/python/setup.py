"""Build step: generate the protobuf messages from proto/ into the package before building.

proto/ here is a link to the repository's proto/ (the contract is never copied). Only the
messages are generated (hanseq_pb2.py); the client builds its calls from the service
descriptor, so there is no generated stub module whose absolute imports would clash with
the server's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PROTO = Path("hanseq/v1/hanseq.proto")
TARGET = HERE / "src" / "hanseq_client" / "_proto"


def generate() -> None:
    root = HERE / "proto"
    if not (root / PROTO).exists():
        if (TARGET / "hanseq_pb2.py").exists():
            return  # building from an sdist, which carries the generated module
        sys.exit(f"hanseq-client: {root / PROTO} is missing; build from the hanseq repository")
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{root}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                str(PROTO),
            ],
            check=True,
        )
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in ("hanseq_pb2.py", "hanseq_pb2.pyi"):
            shutil.copy(Path(out) / PROTO.parent / name, TARGET / name)
    (TARGET / "__init__.py").write_text('"""Generated from proto/ at build time."""\n')


# Before setup(): package discovery must already see hanseq_client._proto.
generate()
setup()
