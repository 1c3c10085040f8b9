"""The decoder step compiled (torch.compile, dynamic batch and source shapes) against eager.

    .venv/bin/python bench/compile.py --model models/hanseq-multitask \
        --data ../shared/corpora/translate-koen/valid.tsv

Compiles the translate head's ``decoder.step`` (embedding, recurrent cell, attention, the
attentional layer: everything of a step but the output layer, which the shortlist and int8
paths already specialise), checks that it decodes the same outputs, then times eager and
compiled greedy decoding in interleaved rounds. Prints the compile time and a table.
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
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.precision import CHOICES, choose, describe_cpu, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--sentences", type=int, default=256, help="inputs per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="rows decoding at once")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default="auto",
        help="decoding number format (auto: as the server picks)",
    )
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    texts = [e.source for e in read_tsv(Path(args.data))[0][: args.sentences]]
    bundle = load_bundle(args.model, torch.device("cpu"))
    chosen = choose(args.precision, "cpu")
    prepare(bundle.model, chosen.precision)
    pipeline = Pipeline.from_bundle(bundle, batch_size=args.batch_size)
    pipeline.warn_truncated = False
    opts = SearchOptions(max_length=80, beam_size=args.beam_size)
    decoder = bundle.model.head(args.task).decoder
    eager = decoder.step
    reference = [g.text for g in pipeline.generate(args.task, texts, opts)]
    started = time.perf_counter()
    compiled = torch.compile(eager, dynamic=True)
    decoder.step = compiled
    outputs = [g.text for g in pipeline.generate(args.task, texts, opts)]
    first = time.perf_counter() - started
    same = sum(a == b for a, b in zip(reference, outputs, strict=True))
    times: dict[str, list[float]] = {"eager": [], "torch.compile": []}
    for _ in range(args.repeats):
        for name, step in (("eager", eager), ("torch.compile", compiled)):
            decoder.step = step
            started = time.perf_counter()
            pipeline.generate(args.task, texts, opts)
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["eager"])
    rows = [
        [name, f"{len(texts) / statistics.median(t):.1f}", f"{base / statistics.median(t):.2f}x"]
        for name, t in times.items()
    ]
    search = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}"
    print(
        f"{args.model} {args.task}: {len(texts)} inputs, {search}, batch {args.batch_size}, "
        f"{args.threads} thread(s), torch {torch.__version__}, medians of {args.repeats}; "
        f"{chosen.precision} ({chosen.why}); CPU: {describe_cpu()}\n"
        f"compiling and the first compiled run: {first:.1f} s; "
        f"outputs equal to eager: {same}/{len(texts)}\n"
    )
    print(table(["decoder step", "sentences/s", "vs eager"], rows))


if __name__ == "__main__":
    main()
