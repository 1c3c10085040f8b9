"""The training curve: each validation's scores against its step and training time.

    .venv/bin/python bench/curve.py runs/multitask/log.jsonl [--progress train.log]

Reads the trainer's log (one JSON line per validation). Training time is the record's
``minutes``; a log written before the trainer recorded it gets its times from the progress
bar's output (``--progress``: the captured stderr of ``hanseq train``, whose tqdm lines hold
``step/total [elapsed<...``). Prints a Markdown table for the model card.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BAR = re.compile(r"(\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<")


def bar_minutes(path: Path) -> dict[int, float]:
    """step -> elapsed minutes, from tqdm's progress lines (the last seen for each step)."""
    out = {}
    for match in BAR.finditer(path.read_text(encoding="utf-8", errors="replace")):
        step, hours, minutes, seconds = match.groups()
        out[int(step)] = int(hours or 0) * 60 + int(minutes) + int(seconds) / 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="the run's log.jsonl")
    parser.add_argument("--progress", type=Path, help="hanseq train's captured stderr")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.log.read_text().splitlines()]
    validations = [r for r in records if r.get("event") == "validation"]
    clock = bar_minutes(args.progress) if args.progress else {}
    tasks = list(validations[0]["scores"]) if validations else []
    metrics = {t: "bleu" if t == "translate" else "rouge_l" for t in tasks}
    print("| step | minutes | " + " | ".join(f"{t} {metrics[t]}" for t in tasks) + " | mean |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for r in validations:
        minutes = r.get("minutes", clock.get(r["step"]))
        shown = f"{minutes:.0f}" if minutes is not None else "?"
        cells = " | ".join(f"{r['scores'][t][metrics[t]]:.2f}" for t in tasks)
        print(f"| {r['step']:,} | {shown} | {cells} | {r['score']:.2f} |")


if __name__ == "__main__":
    main()
