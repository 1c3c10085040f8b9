"""Vocabulary shortlist sizes against speed and scores, on one task's valid split.

    .venv/bin/python bench/shortlist.py --model runs/translate-single/bundle \\
        --config configs/translate-single.yaml --limit 1000

For each (entries per source piece, frequent pieces) pair, the tables are counted from the
train split the config names (as ``hanseq export --shortlist`` does), and the first ``--limit``
valid inputs are decoded greedily in batches of 64 on one thread: the mean number of columns a
step computes, the share of outputs identical to the whole vocabulary's, the task's metric,
and the speed-up over the whole vocabulary: the ratio of median times, the two decoded in
turn ``--repeats`` times (this shared machine's speed drifts within a run).
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
from hanseq.engine.config import load_config  # noqa: E402
from hanseq.engine.data import encode, read_tsv  # noqa: E402
from hanseq.engine.metrics import task_scores  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.shortlist import LexicalTable  # noqa: E402


def _columns(pipeline: Pipeline, task: str, texts: list[str]) -> float:
    """Mean columns per batch of 64 (the batches the timed run decodes)."""
    head = pipeline.model.head(task)
    sizes = []
    for start in range(0, len(texts), 64):
        src, _ = pipeline.encode_sources(pipeline.tokenize(texts[start : start + 64]))
        copyable = None if head.copy is None else head.copy.mapping[src]
        sizes.append(head.lexicon.rows(src, copyable).columns.numel())
    return statistics.mean(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a bundle")
    parser.add_argument("--config", type=Path, required=True, help="its training config")
    parser.add_argument("--task", default="translate")
    parser.add_argument("--limit", type=int, default=1000, help="first N valid inputs")
    parser.add_argument("--top", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--frequent", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, in turn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    bundle = load_bundle(args.model, shortlist=False)
    pipeline = Pipeline.from_bundle(bundle)
    pipeline.warn_truncated = False
    source, target = bundle.source, bundle.targets[args.task]
    tcfg, root = cfg.tasks[args.task], cfg.corpora_root()
    limits = cfg.data.max_source_length, cfg.data.max_target_length
    train = encode(read_tsv(root / tcfg.train)[0], source, target, *limits)
    valid = read_tsv(root / tcfg.valid)[0][: args.limit]
    texts, refs = [e.source for e in valid], [e.target for e in valid]
    opts = SearchOptions(max_length=int(bundle.manifest.get("max_target_length", 100)))
    head = bundle.model.head(args.task)
    metric = cfg.task_metric(args.task)

    def timed() -> tuple[list[str], float]:
        start = time.perf_counter()
        out = [g.text for g in pipeline.generate(args.task, texts, opts)]
        return out, time.perf_counter() - start

    def compare(lexicon: LexicalTable | None) -> tuple[list[str], list[str], float]:
        """Both ways, alternating (this machine's speed drifts): outputs of each and the
        ratio of the median times."""
        pipeline.generate(args.task, texts[:64], opts)  # warm up
        whole_s, short_s, whole, short = [], [], [], []
        for _ in range(args.repeats):
            head.lexicon = None
            whole, seconds = timed()
            whole_s.append(seconds)
            head.lexicon = lexicon
            short, seconds = timed()
            short_s.append(seconds)
        head.lexicon = None
        return whole, short, statistics.median(whole_s) / statistics.median(short_s)

    print(f"{args.task} valid, first {len(texts)} inputs; greedy, batch 64, one thread")
    print(f"\n| entries | frequent | columns | outputs unchanged | {metric} | speed-up |")
    print("|---|---|---|---|---|---|")
    whole, _, _ = compare(None)
    score = task_scores(args.task, whole, refs)[metric]
    vocab = len(target.vocab)
    print(f"| whole vocabulary | - | {vocab} | 100% | {score:.2f} | 1.00x |")
    for top in args.top:
        for frequent in args.frequent:
            lexicon = LexicalTable.build(
                train.sources, train.targets, len(source.vocab), vocab, top, frequent
            )
            whole, out, ratio = compare(lexicon)
            same = sum(a == b for a, b in zip(out, whole, strict=True)) / len(out)
            score = task_scores(args.task, out, refs)[metric]
            head.lexicon = lexicon
            columns = _columns(pipeline, args.task, texts)
            head.lexicon = None
            print(
                f"| {top} | {frequent} | {columns:.0f} | {same:.1%} | {score:.2f} | {ratio:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
