"""Decoding on a GPU: scores and speed at fp32 and fp16, with and without the shortlist.

    python bench/gpu.py --model models/hanseq-multitask --config configs/multitask.yaml

For every task of the bundle, its whole valid split (as the training config names it, under
its corpora root or $HANSEQ_CORPORA) is decoded in batches of 64 (greedy and beam 5) on
``--device``, at fp32 and with fp16 weights (what the service's CUDA workers use), over the
shortlist and over the whole vocabulary; it prints the config's metric for each task and
sentences/s (median of ``--repeats``), so a faster path can be checked to keep the scores.
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
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.metrics import task_scores  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402


def timed(pipeline: Pipeline, task: str, texts: list[str], opts, repeats: int):
    pipeline.generate(task, texts[:64], opts)  # warm up (kernels, Mecab)
    times, out = [], []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = [g.text for g in pipeline.generate(task, texts, opts)]
        times.append(time.perf_counter() - start)
    return out, len(texts) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="the bundle's training config")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.model} on {args.device} ({name}), torch {torch.__version__}, batch 64\n")
    print("| task | search | weights | shortlist | score | sentences/s |")
    print("|---|---|---|---|---|---|")
    for half in (False, True):
        for shortlist in (True, False):
            bundle = load_bundle(args.model, args.device, shortlist=shortlist)
            if half:
                bundle.model.half()
            pipeline = Pipeline.from_bundle(bundle)
            pipeline.warn_truncated = False
            for task in bundle.tasks:
                examples = read_tsv(cfg.corpora_root() / cfg.tasks[task].valid)[0]
                metric = cfg.task_metric(task)
                texts, refs = [e.source for e in examples], [e.target for e in examples]
                for beam in (1, 5):
                    opts = SearchOptions(beam_size=beam, max_length=80)
                    out, speed = timed(pipeline, task, texts, opts, args.repeats)
                    score = task_scores(task, out, refs)[metric]
                    print(
                        f"| {task} | {'greedy' if beam == 1 else 'beam 5'} | "
                        f"{'fp16' if half else 'fp32'} | {'on' if shortlist else 'off'} | "
                        f"{metric} {score:.2f} | {speed:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
