"""Serving throughput and latency: dynamic batching against max_batch_size=1, and against the
offline engine at the same batch size, in one run.

    .venv/bin/python bench/serve.py --model models/hanseq-multitask --task translate \
        --data ../shared/corpora/translate-koen/valid.tsv

Starts `hanseq serve` itself (a real process on a free port) once per configuration, drives it
with closed-loop clients (each sends its next request when the last one returns) and prints a
Markdown table for bench/README.md. Targets (issue #3), on CPU: at 32 concurrent clients >= 5x
the throughput of max_batch_size=1; serving overhead against the offline engine <= 15%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hanseq.engine.bundle import load_bundle  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.precision import choose, describe_cpu, prepare  # noqa: E402
from hanseq.v1 import hanseq_pb2 as pb  # noqa: E402
from hanseq.v1 import hanseq_pb2_grpc  # noqa: E402

# Every request decoded (this measures batching), greedily as the offline engine below: left
# unset, the beam would be the bundle's default (5 for translate), against a greedy engine.
FRESH = pb.DecodingOptions(no_cache=True, beam_size=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str, port: int, threads: int, max_batch: int, devices: str = "cpu", **settings: str
) -> subprocess.Popen:
    env = {
        **os.environ,
        "HANSEQ_METRICS_PORT": "-1",
        "HANSEQ_PORT": str(port),
        "HANSEQ_MODELS": model,
        "HANSEQ_DEVICES": devices,
        "HANSEQ_CPU_THREADS": str(threads),
        "HANSEQ_MAX_BATCH_SIZE": str(max_batch),
        "HANSEQ_LOG_LEVEL": "WARNING",
        "HANSEQ_MAX_QUEUE_SIZE": "100000",
        **{f"HANSEQ_{k.upper()}": v for k, v in settings.items()},
    }
    # `hanseq serve`, also where the package is not installed (a GPU machine's own Python)
    return subprocess.Popen(
        [sys.executable, "-m", "hanseq.service.cli", "serve"], env=env, cwd=ROOT
    )


async def wait_ready(channel, seconds: float = 300) -> None:
    """Until the health service says SERVING (the models are loaded and warm)."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("server did not start")


async def closed_loop(stub, task: str, texts: list[str], clients: int, requests: int):
    latencies: list[float] = []
    batches: list[int] = []
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            request = pb.GenerateRequest(task=task, text=texts[i % len(texts)], options=FRESH)
            reply = await stub.Generate(request)
            latencies.append(1000 * (time.perf_counter() - started))
            batches.append(reply.batch_size)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return requests / (time.perf_counter() - started), latencies, statistics.mean(batches)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def measure(
    model, task, texts, threads, max_batch, levels, per_client, repeats, devices, precision
):
    port = free_port()
    server = start_server(model, port, threads, max_batch, devices, cpu_precision=precision)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    rows = {}
    try:
        await wait_ready(channel)
        await closed_loop(stub, task, texts, 8, 64)  # warm-up
        for clients in levels:
            runs = [
                await closed_loop(stub, task, texts, clients, max(per_client * clients, 64))
                for _ in range(repeats)
            ]
            rate = statistics.median(r[0] for r in runs)
            lat = [x for r in runs for x in r[1]]
            batch = statistics.mean(r[2] for r in runs)
            rows[clients] = (rate, pct(lat, 50), pct(lat, 95), pct(lat, 99), batch)
    finally:
        await channel.close()
        server.terminate()
        server.wait(60)
    return rows


def offline_rate(
    model: str,
    task: str,
    texts: list[str],
    batch: float,
    threads: int,
    repeats: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> float:
    """The engine alone on the same inputs in the same arrival-order batches the server
    forms (a batch is sorted within itself, as a worker does; never across batches)."""
    import torch

    torch.set_num_threads(threads)
    bundle = load_bundle(model, device)
    if device.startswith("cuda"):
        bundle.model.half()  # as the server's CUDA workers run it
    else:
        prepare(bundle.model, choose(precision, device).precision)  # as its CPU workers do
    size = max(1, round(batch))
    pipeline = Pipeline.from_bundle(bundle, batch_size=size)
    pipeline.warn_truncated = False
    sample = texts[: max(256, size * 8)]
    chunks = [sample[i : i + size] for i in range(0, len(sample), size)]
    # the server's default for a request that sets no max_length
    opts = SearchOptions(max_length=min(bundle.manifest.get("max_target_length", 100), 256))
    pipeline.generate(task, sample[:32], opts)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for chunk in chunks:
            pipeline.generate(task, chunk, opts)
        times.append(time.perf_counter() - started)
    return len(sample) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory (or one of bundles)")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=8, help="requests per client per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median rate)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument(
        "--devices", default="cpu", help="the server's HANSEQ_DEVICES (e.g. cuda:0,cuda:0)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="the server's HANSEQ_CPU_PRECISION (and the offline engine's); default auto",
    )
    args = parser.parse_args()

    texts = [e.source for e in read_tsv(Path(args.data))[0][:2000]]
    levels = [int(x) for x in args.levels.split(",")]
    common = (levels, args.per_client, args.repeats, args.devices, args.precision)
    batched = asyncio.run(measure(args.model, args.task, texts, args.threads, 64, *common))
    single = asyncio.run(measure(args.model, args.task, texts, args.threads, 1, *common))
    device = args.devices.split(",")[0]
    chosen = choose(args.precision, device)
    print(
        f"task {args.task}, greedy, devices {args.devices}, worker torch threads "
        f"{args.threads}, median of {args.repeats} runs per cell; CPU: {describe_cpu()}; "
        f"CPU precision {chosen.precision} ({chosen.why})\n"
    )
    print(
        "| clients | batching req/s | p50 ms | p95 ms | p99 ms | mean batch | "
        "max_batch_size=1 req/s | speed-up | offline engine sent/s at that batch | overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in levels:
        rate, p50, p95, p99, batch = batched[clients]
        one = single[clients][0]
        offline = offline_rate(
            args.model,
            args.task,
            texts,
            batch,
            args.threads,
            args.repeats,
            device,
            args.precision,
        )
        print(
            f"| {clients} | {rate:,.1f} | {p50:,.1f} | {p95:,.1f} | {p99:,.1f} | {batch:.1f} | "
            f"{one:,.1f} | {rate / one:.1f}x | {offline:,.1f} | {1 - rate / offline:+.0%} |"
        )


if __name__ == "__main__":
    main()
