"""When a running batch drops the rows that ended: greedy decoding at several ``compact_at``.

    .venv/bin/python bench/compaction.py --model models/hanseq-multitask \
        --data ../shared/corpora/translate-koen/valid.tsv

A RunningBatch (engine/continuous.py) keeps ended rows masked until ``compact_at`` of its
rows are dead (0: it compacts at every ending, as it did before). Every setting decodes the
same inputs once a round, rounds interleaved; the table has the medians, the ratio to
``compact_at`` 0 and how many outputs equal its outputs, per precision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import table  # noqa: E402
from hanseq.engine.bundle import load_bundle  # noqa: E402
from hanseq.engine.continuous import RunningBatch  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.precision import describe_cpu, prepare  # noqa: E402


def rows_for(pipeline: Pipeline, task: str, texts: list[str], fractions: list[float],
             repeats: int) -> list[list[str]]:  # fmt: skip
    opts = SearchOptions(max_length=80)
    times: dict[float, list[float]] = {f: [] for f in fractions}
    outputs: dict[float, list[str]] = {}
    for _ in range(repeats):
        for fraction in fractions:
            RunningBatch.compact_at = fraction
            started = time.perf_counter()
            outputs[fraction] = [g.text for g in pipeline.generate(task, texts, opts)]
            times[fraction].append(time.perf_counter() - started)
    base = statistics.median(times[fractions[0]])
    rows = []
    for fraction in fractions:
        median = statistics.median(times[fraction])
        same = sum(a == b for a, b in zip(outputs[fractions[0]], outputs[fraction], strict=True))
        rows.append(
            [
                f"{fraction:g}",
                f"{len(texts) / median:.1f}",
                f"{base / median:.2f}x",
                f"{same}/{len(texts)}",
            ]  # fmt: skip
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--sentences", type=int, default=512, help="inputs per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="rows decoding at once")
    parser.add_argument("--fractions", default="0,0.25,0.5", help="compact_at values; first = base")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    examples, _ = read_tsv(Path(args.data))
    texts = [e.source for e in examples[: args.sentences]]
    fractions = [float(f) for f in args.fractions.split(",")]
    print(
        f"{args.model} {args.task}: {len(texts)} inputs, greedy, batch {args.batch_size}, "
        f"{args.threads} thread(s), medians of {args.repeats}; CPU: {describe_cpu()}\n"
    )
    for precision in args.precisions.split(","):
        bundle = load_bundle(args.model, torch.device("cpu"))
        prepare(bundle.model, precision)
        pipeline = Pipeline.from_bundle(bundle, batch_size=args.batch_size)
        pipeline.warn_truncated = False
        print(f"{precision}:\n")
        header = ["compact_at", "sentences/s", f"vs {fractions[0]:g}", "same outputs"]
        print(table(header, rows_for(pipeline, args.task, texts, fractions, args.repeats)))
        print()


if __name__ == "__main__":
    main()
