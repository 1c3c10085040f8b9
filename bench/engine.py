"""Engine throughput on the CPU: tokenization, and generation at several batch sizes.

    .venv/bin/python bench/engine.py --model runs/multitask/bundle --task translate \
        --data ../shared/corpora/translate-koen/valid.tsv

Prints a Markdown table (medians of --repeats runs) for bench/README.md. Targets (issue #2):
batch-64 greedy >= 10x batch-1 throughput; Korean tokenization >= 10,000 sentences/s on one core.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hanseq.engine import korean  # noqa: E402
from hanseq.engine.bundle import load_bundle  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.precision import choose, describe_cpu, prepare  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tokenizer_rows(pipeline: Pipeline, texts: list[str], repeats: int) -> list[list[str]]:
    source = pipeline.source.tokenizer
    rows = []
    for name, fn in [
        ("Mecab morphemes (korean.tokenize)", lambda: [korean.tokenize(t) for t in texts]),
        (
            f"source tokenizer ({source.cfg.kind}+{source.cfg.subword})",
            lambda: [source.tokenize(t) for t in texts],
        ),
    ]:
        fn()  # warm caches (Mecab start, BPE piece cache)
        seconds = median_seconds(fn, repeats)
        rows.append([name, f"{len(texts) / seconds:,.0f} sent/s"])
    return rows


def generation_rows(
    pipeline: Pipeline,
    task: str,
    texts: list[str],
    batches: list[int],
    repeats: int,
    max_length: int,
) -> list[list[str]]:
    rows = []
    for beam in [1, 5]:
        base = None
        for batch in batches:
            pipeline.batch_size = batch
            opts = SearchOptions(beam_size=beam, max_length=max_length)
            outputs = pipeline.generate(task, texts[:batch], opts)  # warm-up
            seconds = median_seconds(lambda o=opts: pipeline.generate(task, texts, o), repeats)
            outputs = pipeline.generate(task, texts, opts)
            tokens = sum(len(o.tokens) + 1 for o in outputs)
            rate = len(texts) / seconds
            base = base or rate
            rows.append(
                [
                    f"{'greedy' if beam == 1 else 'beam 5'}",
                    str(batch),
                    f"{rate:,.1f}",
                    f"{tokens / seconds:,.0f}",
                    f"{rate / base:.1f}x",
                ]
            )
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--data", required=True, help="TSV whose first column is the input")
    parser.add_argument("--sentences", type=int, default=256, help="inputs per measurement")
    parser.add_argument("--batches", default="1,16,64", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; median reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-length", type=int, default=80, help="max output tokens")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="fp32",
        help="decoding number format (engine/precision.py); auto: as the server picks",
    )
    parser.add_argument(
        "--int8",
        dest="precision",
        action="store_const",
        const="int8",
        help="the same as --precision int8",
    )
    parser.add_argument(
        "--no-shortlist", action="store_true", help="the whole target vocabulary at every step"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (fp16 weights on CUDA)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model, args.device, shortlist=not args.no_shortlist)
    if args.device.startswith("cuda"):
        bundle.model.half()  # as the service's CUDA workers run it
    else:
        chosen = choose(args.precision, args.device)
        prepare(bundle.model, chosen.precision)
    pipeline = Pipeline.from_bundle(bundle)
    pipeline.warn_truncated = False  # a benchmark, not a user: the count is not news
    examples, _ = read_tsv(Path(args.data))
    texts = [e.source for e in examples[: args.sentences]]
    tok_texts = [e.source for e in examples[:5000]]
    print(
        f"bundle {pipeline.targets and args.model} task {args.task}: {len(texts)} inputs, "
        f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}"
        f"{', whole vocabulary' if args.no_shortlist else ''}, on {args.device}"
    )
    if not args.device.startswith("cuda"):
        print(f"CPU: {describe_cpu()}; decoding in {chosen.precision} ({chosen.why})\n")
    print(
        table(
            ["tokenizer (one core)", "throughput"],
            tokenizer_rows(pipeline, tok_texts, args.repeats),
        )
    )
    print()
    batches = [int(b) for b in args.batches.split(",")]
    print(
        table(
            ["search", "batch", "sentences/s", "tokens/s", "vs batch 1"],
            generation_rows(pipeline, args.task, texts, batches, args.repeats, args.max_length),
        )
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
