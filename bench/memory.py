"""A worker's resident memory as it decodes successive slices of inputs, per precision.

    .venv/bin/python bench/memory.py --model models/hanseq-multitask \
        --data ../shared/corpora/translate-koen/valid.tsv \
        --settings fp32 bf16 bf16:cache=64 bf16:cache=16

Each setting runs in a process of its own, as a worker does: ``PRECISION[:cache=N][:grid=off]``,
where ``cache`` sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` (oneDNN reads it once per process)
and ``grid=off`` decodes with every shape as it comes instead of engine/shapes.py's grid. The
process decodes ``--slices`` slices of ``--sentences`` different inputs one after the other,
then prints the current RSS after each slice and the seconds the decoding took. With
``--rounds`` above 1 every setting runs once a round and the table shows the median seconds
(and the last round's memory). ``--count-kernels`` adds the oneDNN kernels each process built
and the milliseconds it spent building them (``ONEDNN_VERBOSE=profile_create``: oneDNN builds
one per new product shape; its bf16 products are those; fp32 ones run in MKL and build none).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import table  # noqa: E402


def current_rss_mb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def child(args: argparse.Namespace) -> None:
    import torch

    from hanseq.engine import shapes
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.data import read_tsv
    from hanseq.engine.options import SearchOptions
    from hanseq.engine.pipeline import Pipeline
    from hanseq.engine.precision import prepare

    torch.set_num_threads(1)
    precision, _, grid = args.child.partition(":grid=")
    shapes.ON = grid != "off"
    texts = [e.source for e in read_tsv(Path(args.data))[0]]
    bundle = load_bundle(args.model, torch.device("cpu"))
    prepare(bundle.model, precision)
    pipeline = Pipeline.from_bundle(bundle, batch_size=args.batch_size)
    pipeline.warn_truncated = False
    opts = SearchOptions(max_length=80, beam_size=args.beam_size)
    rss, seconds = [], 0.0
    for i in range(args.slices):
        start = time.perf_counter()
        pipeline.generate(args.task, texts[i * args.sentences : (i + 1) * args.sentences], opts)
        seconds += time.perf_counter() - start
        rss.append(current_rss_mb())
    print(json.dumps({"rss": rss, "seconds": seconds}))


def run(setting: str, argv: list[str], count_kernels: bool = False) -> dict:
    precision, *options = setting.split(":")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if count_kernels:
        env["ONEDNN_VERBOSE"] = "profile_create"
    child = precision
    for option in options:
        name, _, value = option.partition("=")
        if name == "cache":
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = value
        elif name == "grid":
            child += f":grid={value}"
        else:
            raise SystemExit(f"unknown option {option!r} in setting {setting!r}")
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", child],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    result = json.loads(lines[-1])
    built = [
        line for line in lines if line.startswith("onednn_verbose,v1,primitive,create:cache_miss")
    ]
    result["kernels"] = (len(built), sum(float(line.rsplit(",", 1)[1]) for line in built))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--sentences", type=int, default=256, help="inputs per slice")
    parser.add_argument("--slices", type=int, default=8, help="slices decoded one after another")
    parser.add_argument("--batch-size", type=int, default=64, help="rows decoding at once")
    parser.add_argument("--beam-size", type=int, default=5, help="1: greedy")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["fp32", "bf16"],
        help="PRECISION[:cache=N][:grid=off] each",
    )
    parser.add_argument("--rounds", type=int, default=1, help="every setting once a round")
    parser.add_argument(
        "--count-kernels", action="store_true", help="count the oneDNN kernels each one built"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from hanseq.engine.precision import describe_cpu

    argv = [
        *("--model", args.model, "--task", args.task, "--data", args.data),
        *("--sentences", str(args.sentences), "--slices", str(args.slices)),
        *("--batch-size", str(args.batch_size), "--beam-size", str(args.beam_size)),
    ]
    seconds: dict[str, list[float]] = {s: [] for s in args.settings}
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for s in args.settings:
            results[s] = run(s, argv, args.count_kernels)
            seconds[s].append(results[s]["seconds"])
    search = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}"
    print(
        f"{args.model} {args.task}: {args.slices} slices of {args.sentences} inputs, {search}, "
        f"batch {args.batch_size}, one thread; CPU: {describe_cpu()}\n"
    )
    header = ["setting", f"decoding s (median of {args.rounds})"]
    header += ["kernels built", "ms building"] if args.count_kernels else []
    header += [f"MB after {(i + 1) * args.sentences:,}" for i in range(args.slices)]
    rows = []
    for s, r in results.items():
        built, ms = r["kernels"]
        kernels = [f"{built:,}", f"{ms:,.0f}"] if args.count_kernels else []
        rows.append(
            [s, f"{statistics.median(seconds[s]):.2f}", *kernels, *(f"{mb:,}" for mb in r["rss"])]
        )
    print(table(header, rows))


if __name__ == "__main__":
    main()
