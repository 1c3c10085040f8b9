"""Decoding options per task: greedy against beam search with length penalties (and, for
respond, sampling), scored on each task's whole valid split, to choose the bundle's defaults.

    .venv/bin/python bench/decoding.py --model runs/multitask/bundle \\
        --config configs/multitask.yaml

For every task of the bundle and every option set, the valid split the config names (with its
dialogue context, where the config gives one) is decoded in batches of 64 on one thread. Prints
one Markdown table per task: the task's metric (and the others), the mean output length in
tokens, sentences/s, and which row scores best. ``hanseq export --decoding`` records a choice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hanseq.engine.bundle import load_bundle  # noqa: E402
from hanseq.engine.config import Config, load_config  # noqa: E402
from hanseq.engine.data import Example, read_tsv, with_context  # noqa: E402
from hanseq.engine.dialogue import read_histories  # noqa: E402
from hanseq.engine.metrics import task_scores  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.precision import describe_cpu  # noqa: E402

# (row name, options); every task gets these, respond also the sampling rows.
SETS = [
    ("greedy", {}),
    ("beam 4", {"beam_size": 4}),
    ("beam 4, alpha 0.6", {"beam_size": 4, "length_penalty": 0.6}),
    ("beam 5, alpha 1.0", {"beam_size": 5, "length_penalty": 1.0}),
    (
        "beam 5, alpha 1.0, no repeated 3-grams",
        {"beam_size": 5, "length_penalty": 1.0, "no_repeat_ngram": 3},
    ),  # noqa: E501
]
SAMPLING = [
    ("sampling, top-p 0.9, seed 1", {"sampling": True, "top_p": 0.9, "seed": 1}),
    (
        "sampling, top-k 10, T 0.7, seed 1",
        {"sampling": True, "top_k": 10, "temperature": 0.7, "seed": 1},
    ),  # noqa: E501
]


def cpu_name() -> str:
    return describe_cpu()  # the model and the flags that decide the fast paths


def valid_examples(cfg: Config, task: str) -> list[Example]:
    root, tcfg = cfg.corpora_root(), cfg.tasks[task]
    examples = read_tsv(root / tcfg.valid)[0]
    if tcfg.context_turns and tcfg.valid_context:
        histories = read_histories(root / tcfg.valid_context)
        examples = with_context(examples, histories, tcfg.context_turns)[0]
    return examples


def rows_for(pipeline: Pipeline, cfg: Config, task: str, limit: int) -> list[list[str]]:
    examples = valid_examples(cfg, task)[: limit or None]
    metric = cfg.task_metric(task)
    sets = SETS + (SAMPLING if task == "respond" else [])
    table, best = [], None
    for name, options in sets:
        opts = SearchOptions(max_length=cfg.data.max_target_length, **options)
        started = time.perf_counter()
        outputs = pipeline.generate(task, [e.source for e in examples], opts)
        seconds = time.perf_counter() - started
        scores = task_scores(task, [o.text for o in outputs], [e.target for e in examples])
        length = statistics.mean(len(o.tokens) for o in outputs)
        others = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != metric)
        table.append([name, scores[metric], others, length, len(examples) / seconds])
        if best is None or scores[metric] > best[1]:
            best = (name, scores[metric])
    print(f"\n{task}: {len(examples)} valid examples, metric {metric}, best: {best[0]}\n")
    print(f"| options | {metric} | other scores | mean output tokens | sentences/s |")
    print("|---|---|---|---|---|")
    for name, score, others, length, rate in table:
        mark = "**" if name == best[0] else ""
        print(f"| {name} | {mark}{score:.2f}{mark} | {others} | {length:.1f} | {rate:.1f} |")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a bundle")
    parser.add_argument("--config", type=Path, required=True, help="its training config")
    parser.add_argument("--tasks", nargs="+", help="default: every task of the bundle")
    parser.add_argument("--limit", type=int, default=0, help="first N valid examples (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    bundle = load_bundle(args.model)
    pipeline = Pipeline.from_bundle(bundle)
    pipeline.warn_truncated = False
    print(f"{bundle.id} {bundle.version}; {cpu_name()}, 1 torch thread, batches of 64")
    for task in args.tasks or bundle.tasks:
        rows_for(pipeline, cfg, task, args.limit)


if __name__ == "__main__":
    main()
