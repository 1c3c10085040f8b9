"""Soak: a bounded run of mixed traffic at high concurrency while things break.

    .venv/bin/python bench/soak.py                 # 10 minutes, shipped models, 64 callers
    .venv/bin/python bench/soak.py --minutes 2 --callers 32

Starts a real redis-server and `hanseq serve` (two CPU workers, the shared Redis cache, a
small local layer so that most lookups reach Redis) on free ports, and drives them with
hanseq_client.AsyncClient callers in a closed loop: the three tasks, single calls, batches
and streams, greedy, beam and seeded sampling, half the inputs repeated (cache hits). During
the run Redis is killed and restarted twice and one worker is killed. Prints a Markdown
table for bench/README.md.

Targets (issue #8): every call succeeds, or fails with a retryable code that the client's
retries turn into a success: no silent loss, no hang (each call has a deadline); the
server's resident memory (main process and workers) grows < 5% from the end of warm-up
(the first 20% of the run) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import free_port  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq_client import AsyncClient, HanseqError  # noqa: E402

CORPORA = Path(os.environ.get("HANSEQ_CORPORA") or ROOT.parent / "shared" / "corpora")
SOURCES = {
    "translate": "translate-koen/valid.tsv",
    "respond": "dialogue-ko/valid.tsv",
    "summarize": "summarize-ko/valid.tsv",
}
OPTIONS = [{}, {}, {"beam_size": 4}, {"sample": True, "seed": 7, "top_p": 0.9}]


class Redis:
    def __init__(self, workdir: str):
        self.port, self.workdir, self.process = free_port(), workdir, None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_server(args, redis: Redis, port: int, metrics_port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "HANSEQ_PORT": str(port),
        "HANSEQ_METRICS_PORT": str(metrics_port),
        "HANSEQ_MODELS": args.models,
        "HANSEQ_DEVICES": "cpu,cpu",
        "HANSEQ_CPU_THREADS": "1",
        "HANSEQ_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        # A small local layer, so that most lookups reach Redis and its outages matter.
        "HANSEQ_CACHE_ENTRIES": str(args.local_entries),
        "HANSEQ_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([str(ROOT / ".venv" / "bin" / "hanseq"), "serve"], env=env, cwd=ROOT)


def inputs(per_task: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out = {}
    for task, name in SOURCES.items():
        examples, _ = read_tsv(CORPORA / name)
        sources = [e.source for e in examples]
        out[task] = rng.sample(sources, min(per_task, len(sources)))
    return out


class Tally:
    def __init__(self):
        self.sent = self.ok = 0
        self.failed: Counter[str] = Counter()
        self.latencies: list[float] = []


async def caller(client: AsyncClient, texts, tally: Tally, stop_at: float, rng: random.Random):
    """One closed-loop caller: its next call when the last one returns."""
    while time.monotonic() < stop_at:
        task = rng.choice(list(texts))
        pool = texts[task]
        text = pool[rng.randrange(len(pool) // 2)] if rng.random() < 0.5 else rng.choice(pool)
        options = rng.choice(OPTIONS)
        kind = rng.random()
        tally.sent += 1
        started = time.perf_counter()
        try:
            if kind < 0.1:
                await client.batch(task, rng.sample(pool, 4), **options)
            elif kind < 0.2 and "beam_size" not in options:
                [u async for u in client.stream(task, text, **options)]
            else:
                await client.generate(task, text, **options)
            tally.ok += 1
            tally.latencies.append(time.perf_counter() - started)
        except HanseqError as e:
            what = "batch" if kind < 0.1 else "stream" if kind < 0.2 else "call"
            tally.failed[f"{e.code} ({what})"] += 1


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    tree = [process, *process.children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20


def workers(pid: int) -> list[int]:
    children = psutil.Process(pid).children()
    return [p.pid for p in children if any("spawn_main" in part for part in p.cmdline())]


def scraped(metrics_port: int) -> tuple[Counter[str], Counter[str]]:
    """Every attempt the server answered, by status code (retries included), and the cache
    lookups by layer/result plus its errors."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    codes: Counter[str] = Counter()
    cache: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hanseq_requests_total":
                codes[s.labels["code"]] += int(s.value)
            elif s.name == "hanseq_cache_lookups_total":
                cache[f"{s.labels['layer']} {s.labels['result']}"] += int(s.value)
            elif s.name == "hanseq_cache_errors_total":
                cache["errors"] += int(s.value)
    return codes, cache


async def chaos(redis: Redis, server: subprocess.Popen, seconds: float, log: list[str]):
    """Redis down for 2 s at 25% and 65% of the run; a worker killed at 45%."""
    start = time.monotonic()

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, start + fraction * seconds - time.monotonic()))

    for fraction, event in ((0.25, "redis"), (0.45, "worker"), (0.65, "redis")):
        await at(fraction)
        stamp = f"{time.monotonic() - start:6.1f} s"
        if event == "redis":
            redis.kill()
            log.append(f"{stamp}: Redis killed")
            await asyncio.sleep(2)
            redis.start()
            log.append(f"{time.monotonic() - start:6.1f} s: Redis restarted")
        else:
            victim = workers(server.pid)[0]
            os.kill(victim, signal.SIGKILL)
            log.append(f"{stamp}: worker {victim} killed")


async def wait_serving(target: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    async with AsyncClient(target, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                await client.translate("안녕하세요")
                return
            except HanseqError:
                await asyncio.sleep(0.5)
    sys.exit("the server never answered")


async def soak(args) -> None:
    texts = inputs(args.inputs, seed=1)
    workdir = tempfile.mkdtemp(prefix="hanseq-soak-")
    redis = Redis(workdir)
    redis.start()
    port, metrics_port = free_port(), free_port()
    server = start_server(args, redis, port, metrics_port)
    target = f"127.0.0.1:{port}"
    try:
        await wait_serving(target)
        seconds = args.minutes * 60
        tally, events = Tally(), []
        stop_at = time.monotonic() + seconds
        rng = random.Random(2)
        async with AsyncClient(target, timeout=args.deadline) as client:
            callers = [
                caller(client, texts, tally, stop_at, random.Random(rng.random()))
                for _ in range(args.callers)
            ]
            load = asyncio.gather(*callers, chaos(redis, server, seconds, events))
            await asyncio.sleep(0.2 * seconds)  # warm-up: caches, allocator pools
            rss_start = rss_mb(server.pid)
            await load
        rss_end = rss_mb(server.pid)
        report(args, tally, *scraped(metrics_port), events, rss_start, rss_end)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        redis.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def report(args, tally: Tally, server_codes, cache, events, rss_start, rss_end) -> None:
    lost = sum(tally.failed.values())
    retryable = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
    retried = sum(n for code, n in server_codes.items() if code in retryable)
    p50 = statistics.median(tally.latencies) * 1000
    p99 = statistics.quantiles(tally.latencies, n=100)[98] * 1000
    growth = 100 * (rss_end - rss_start) / rss_start
    print(f"\n{args.minutes:g} min, {args.callers} callers, models {args.models}\n")
    for line in events:
        print(f"- {line}")
    print("\n| | |\n|---|---|")
    print(f"| calls sent | {tally.sent} |")
    print(f"| succeeded | {tally.ok} |")
    failed = ", ".join(f"{c} {n}" for c, n in sorted(tally.failed.items())) or "none"
    print(f"| failed (after the client's retries), by code | {failed} |")
    print(f"| attempts the server refused with a retryable code (retried) | {retried} |")
    others = ", ".join(f"{c} {n}" for c, n in sorted(server_codes.items()))
    print(f"| server-side attempts by code | {others} |")
    print(f"| p50 / p99 latency of the calls that succeeded | {p50:.0f} / {p99:.0f} ms |")
    lookups = ", ".join(f"{k} {n}" for k, n in sorted(cache.items()) if k != "errors")
    print(f"| cache lookups; Redis errors | {lookups}; {cache['errors']} |")
    rss = f"{rss_start:.0f} -> {rss_end:.0f} MB ({growth:+.1f}%)"
    print(f"| server RSS (main + workers), end of warm-up -> end | {rss} |")
    verdict = "met" if lost == 0 and growth < 5 else "NOT met"
    print(f"\ntargets (no call lost, RSS growth < 5%): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (10)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument("--models", default=str(ROOT / "models"), help="bundle directory")
    parser.add_argument("--inputs", type=int, default=2000, help="distinct inputs per task")
    parser.add_argument("--local-entries", type=int, default=256, help="server's local cache")
    parser.add_argument("--deadline", type=float, default=60.0, help="per call, seconds")
    args = parser.parse_args()
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
