"""One matrix product of a decoder step in each format: fp32, bf16, int8 (fbgemm, oneDNN).

    .venv/bin/python bench/products.py

``x @ W.T`` for the shapes a translate step multiplies (64 rows: a greedy batch; 320: beam 5
over 64 inputs; 1: one request), one thread, ms per call, medians of 5 rounds. int8 is the
decoder's own ``Int8Linear`` (per-row activation scales, the anchor row), packed for each
engine, so the table shows what ``engine/quantize.py``'s ``backend()`` chooses between on this
CPU. Prints the CPU and the flags that decide the paths.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hanseq.engine.precision import describe_cpu  # noqa: E402
from hanseq.engine.quantize import BACKENDS, Int8Linear, backend  # noqa: E402

SHAPES = [
    (64, 512, 1024, "an LSTM cell"),
    (64, 256, 2290, "a shortlist"),
    (64, 256, 8016, "the vocabulary"),
    (320, 512, 1024, "beam 5 x 64"),
    (1, 512, 1024, "one request"),
]


def ms_per_call(f: Callable[[], object], calls: int, rounds: int = 5) -> float:
    for _ in range(10):
        f()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1000


def row(m: int, k: int, n: int, calls: int) -> list[float]:
    torch.manual_seed(0)
    x, w, b = torch.randn(m, k), torch.randn(n, k) * 0.05, torch.zeros(n)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    cells = [
        ms_per_call(lambda: torch.nn.functional.linear(x, w, b), calls),
        ms_per_call(lambda: torch.nn.functional.linear(xb, wb, bb), calls),
    ]
    for engine in BACKENDS:
        layer = Int8Linear(w, b, engine=engine)
        cells.append(ms_per_call(lambda layer=layer: layer(x), calls))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {describe_cpu()}; int8 engine chosen here: {backend()}; one thread\n")
    print("| product | fp32 ms | bf16 ms | int8 fbgemm ms | int8 oneDNN ms |")
    print("|---|---|---|---|---|")
    for m, k, n, what in SHAPES:
        cells = row(m, k, n, args.calls)
        print(f"| {m} x {k} x {n} ({what}) | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
