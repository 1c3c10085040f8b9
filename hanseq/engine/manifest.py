"""A bundle on disk, without torch: its file names and where bundles are. The server process
finds and names bundles with this; loading one (hanseq.engine.bundle) is the workers' job."""

from __future__ import annotations

import time
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
WEIGHTS = "weights.safetensors"


def new_version() -> dict[str, str]:
    """A new bundle's ``version`` (UTC, sortable: repository.py orders versions by it) and
    ``created``, from one clock reading."""
    now = time.gmtime()
    return {
        "version": time.strftime("%Y%m%d-%H%M%S", now),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
    }


def find_bundles(path: Path) -> list[Path]:
    """``path`` itself if it is a bundle, else the bundles directly inside it."""
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"models path {path} does not exist")
    found = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
    if not found:
        raise FileNotFoundError(f"no bundle (a directory with bundle.json) in {path}")
    return found
