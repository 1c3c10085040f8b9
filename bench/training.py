"""Training steps on real batches, the shape grid on and off (engine/shapes.py), in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/training.py --config configs/multitask.yaml \
        --steps 40 --rounds 3

Builds the config's trainer (its data, tasks and mixed precision; nothing is written to its
output_dir), draws each round's batches once and trains on them twice: with the grid (sources at
a multiple of 8 positions, the output layer's rows at a multiple of 64) and without it (every
batch's own lengths). The model trains on in both, so the two see the same batches from nearly
the same weights. A first round of each warms the kernels up and is not counted. Prints the CPU,
the precision and a table of medians: ms a step and target tokens a second.

Unlike `bench/peer.py step-cost`, whose batches all have one shape, these have the lengths a
real run draws: under bf16 on a CPU (oneDNN), a product of a shape not seen before builds its
kernel first, and the output layer's row count is new at nearly every step off the grid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import table  # noqa: E402
from hanseq.engine import distributed as dist_utils  # noqa: E402
from hanseq.engine import shapes  # noqa: E402
from hanseq.engine.config import load_config  # noqa: E402
from hanseq.engine.data import Batch  # noqa: E402
from hanseq.engine.precision import describe_cpu  # noqa: E402
from hanseq.engine.training import Trainer  # noqa: E402


def draw(trainer: Trainer, steps: int) -> list[tuple[str, Batch]]:
    """One round's batches as the trainer would draw them (collated on the grid)."""
    shapes.ON = True
    drawn = []
    for _ in range(steps):
        task = trainer._pick_task()
        drawn.append((task, next(trainer.streams[task])))
    return drawn


def off_grid(batch: Batch) -> Batch:
    """The same batch at its own source width, as collate builds it off the grid."""
    width = int(batch.src_len.max())
    return Batch(batch.src[:, :width], batch.src_len, batch.tgt_in, batch.tgt_out)


def run(trainer: Trainer, drawn: list[tuple[str, Batch]], grid: bool) -> tuple[float, int]:
    """Train on ``drawn``: -> (seconds, target tokens)."""
    shapes.ON = grid
    queue = iter([b if grid else off_grid(b) for _, b in drawn])
    tasks = iter([t for t, _ in drawn])
    streams = trainer.streams
    trainer.streams = {t: queue for t in streams}  # the next drawn batch, whatever the task
    trainer._pick_task = lambda: next(tasks)  # type: ignore[method-assign]
    tokens = 0
    started = time.perf_counter()
    try:
        for _ in drawn:
            tokens += trainer._train_step()[1]
    finally:
        trainer.streams = streams
        del trainer._pick_task
        shapes.ON = True
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--steps", type=int, default=40, help="training steps a round")
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds; medians reported")
    parser.add_argument(
        "--mixed-precision", choices=["auto", "off", "bf16"], help="override the config's"
    )
    args = parser.parse_args()
    cfg = load_config(args.config)
    if args.mixed_precision:
        cfg.training.mixed_precision = args.mixed_precision
    scratch = tempfile.TemporaryDirectory(prefix="hanseq-bench-training-")
    cfg.training.output_dir = scratch.name  # a run of the config may be using its own
    trainer = Trainer(cfg, dist_utils.setup("cpu"))
    times: dict[str, list[float]] = {"grid": [], "off": []}
    rates: dict[str, list[float]] = {"grid": [], "off": []}
    for round_ in range(args.rounds + 1):
        drawn = draw(trainer, args.steps)
        order = ("grid", "off") if round_ % 2 == 0 else ("off", "grid")
        for name in order:
            seconds, tokens = run(trainer, drawn, grid=name == "grid")
            if round_ > 0:  # the first round builds the kernels both ways
                times[name].append(seconds / args.steps * 1000)
                rates[name].append(tokens / seconds)
            print(f"round {round_} {name}: {seconds / args.steps * 1000:.1f} ms a step", flush=True)
    base = statistics.median(rates["off"])
    rows = [
        [
            label,
            f"{statistics.median(times[name]):.1f}",
            f"{statistics.median(rates[name]):,.0f}",
            f"{statistics.median(rates[name]) / base:.2f}x",
        ]
        for name, label in (("off", "every batch's own shapes"), ("grid", "on the grid"))
    ]
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(trainer.amp, "fp32")
    print(
        f"\n{describe_cpu()}; {torch.get_num_threads()} thread(s); {precision}; "
        f"{args.steps} steps a round, medians of {args.rounds} rounds ({args.config})\n"
    )
    print(table(["shapes", "ms a step", "target tokens/s", "vs own shapes"], rows))


if __name__ == "__main__":
    main()
