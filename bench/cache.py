"""Cache-hit latency through gRPC on loopback, beside the miss latency, in one run.

    .venv/bin/python bench/cache.py --model models/hanseq-multitask \
        --data ../shared/corpora/translate-koen/valid.tsv

Starts a redis-server and `hanseq serve` twice on free ports: one with the in-process layer
only (every repeat is a local hit) and one with no local layer in front of Redis (every repeat
is a Redis hit). Closed-loop clients at each concurrency send Translate requests: first the
misses (each text once, no_cache), then the same texts again as hits. Prints a Markdown table
for bench/README.md. Targets (issue #4): local hit p50 < 1 ms, Redis hit p50 < 2 ms, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import free_port, pct, start_server, wait_ready  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.v1 import hanseq_pb2 as pb  # noqa: E402
from hanseq.v1 import hanseq_pb2_grpc  # noqa: E402


def start_redis(port: int, workdir: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


async def latencies(stub, texts: list[str], clients: int, options) -> list[float]:
    """Every text once, by ``clients`` closed-loop clients -> per-request ms."""
    out: list[float] = []
    todo = iter(texts)

    async def client() -> None:
        for text in todo:
            started = time.perf_counter()
            await stub.Translate(pb.TranslateRequest(text=text, options=options))
            out.append(1000 * (time.perf_counter() - started))

    await asyncio.gather(*(client() for _ in range(clients)))
    return out


async def measure(port: int, texts: list[str], levels: list[int], rounds: int) -> dict:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
    await wait_ready(channel)
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service="")
    floor = []  # a health Check runs no hanseq code: the gRPC round trip alone
    for _ in range(300):
        started = time.perf_counter()
        await health.Check(check)
        floor.append(1000 * (time.perf_counter() - started))
    rows = {}
    for clients in levels:
        miss = await latencies(stub, texts, clients, pb.DecodingOptions(no_cache=True))
        await latencies(stub, texts, clients, pb.DecodingOptions())  # fill the cache
        hit: list[float] = []
        for _ in range(rounds):
            hit += await latencies(stub, texts, clients, pb.DecodingOptions())
        rows[clients] = (pct(hit, 50), pct(hit, 99), pct(miss, 50), pct(miss, 99), pct(floor, 50))
    await channel.close()
    return rows


async def run(args) -> None:
    examples, _ = read_tsv(Path(args.data))
    texts = [e.source for e in examples[: args.texts]]
    levels = [int(c) for c in args.clients.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        redis_port = free_port()
        redis = start_redis(redis_port, workdir)
        url = f"redis://127.0.0.1:{redis_port}/0"
        layers = {
            "local (in-process LRU)": {},
            "Redis (no local layer)": {"redis_url": url, "cache_entries": "0"},
        }
        try:
            for name, settings in layers.items():
                port = free_port()
                server = start_server(args.model, port, args.threads, 64, **settings)
                try:
                    results[name] = await measure(port, texts, levels, args.rounds)
                finally:
                    server.terminate()
                    server.wait(60)
        finally:
            redis.terminate()
            redis.wait(10)
    print(f"{len(texts)} texts, Translate, hits repeated {args.rounds}x, loopback\n")
    print("| layer | clients | hit p50 ms | hit p99 ms | miss p50 ms | miss p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        for clients, (h50, h99, m50, m99, _) in rows.items():
            print(f"| {name} | {clients} | {h50:.2f} | {h99:.2f} | {m50:.1f} | {m99:.1f} |")
    floors = ", ".join(f"{r[levels[0]][4]:.2f}" for r in results.values())
    print(f"\nfloor: grpc.health.v1 Check p50 from the same client, one at a time: {floors} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory (or directory of them)")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--texts", type=int, default=200, help="distinct inputs")
    parser.add_argument("--clients", default="1,32", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="times each hit is repeated")
    parser.add_argument("--threads", type=int, default=1, help="worker torch threads")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
