"""What each training choice does: train variants of one config for a fixed budget, score each.

    .venv/bin/python bench/tune.py --config configs/summarize-single.yaml \
        --variants configs/tuning/choices.yaml --minutes 10 --jobs 2

``--variants`` is a YAML mapping: variant name -> {dotted.config.key: value} (``{}`` is the
base config). Every variant trains with ``hanseq train`` for ``--minutes`` on one thread
(``--jobs`` at a time) into ``--work/<name>``, then ``hanseq eval`` scores its bundle on the
task's whole valid split, greedy. Prints a Markdown table: steps reached, the task's metric,
the other scores, and what checkpoint averaging did. ``--decoding`` instead scores one bundle
at every beam size and length penalty given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
HANSEQ = ROOT / ".venv" / "bin" / "hanseq"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def variant_config(base: Path, overrides: dict[str, Any], out: Path, minutes: float) -> Path:
    """The base config with ``overrides`` applied, written beside the variant's run."""
    raw = yaml.safe_load(base.read_text())
    raw.setdefault("data", {})
    root = Path(os.environ.get("HANSEQ_CORPORA") or raw["data"].get("root", "../shared/corpora"))
    raw["data"]["root"] = str(root if root.is_absolute() else (base.parent / root).resolve())
    for key, value in {
        **overrides,
        "training.output_dir": str(out),
        "training.max_minutes": minutes,
        "training.progress": False,
    }.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def train(config: Path, out: Path) -> None:
    if (out / "bundle" / "bundle.json").is_file():
        return  # trained by an earlier call: reuse (delete the folder to train again)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (out / "train.log").open("w") as log:
        subprocess.run(
            [str(HANSEQ), "train", "--config", str(config), "--no-resume"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
        )


def evaluate(
    bundle: Path, task: str, valid: Path, beam: int = 1, alpha: float = 0.0, limit: int = 0
) -> dict:
    command = [str(HANSEQ), "eval", "--model", str(bundle), "--task", task, "--data", str(valid)]
    command += ["--beam", str(beam), "--length-penalty", str(alpha), "--max-examples", str(limit)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def run_log(out: Path) -> tuple[int, dict | None]:
    """-> (steps trained, the averaging record or None)."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = max((r["step"] for r in records if r["event"] == "validation"), default=0)
    averaging = next((r for r in records if r["event"] == "averaging"), None)
    return steps, averaging


def task_of(config: Path) -> tuple[str, Path]:
    raw = yaml.safe_load(config.read_text())
    (task, entry), *rest = raw["tasks"].items()
    if rest:
        sys.exit(f"{config}: tune one task at a time (single-task configs)")
    root = Path(raw["data"]["root"])
    return task, root / entry["valid"]


def tune(args: argparse.Namespace) -> None:
    variants: dict[str, dict] = yaml.safe_load(args.variants.read_text())
    work = args.work.resolve()  # a relative output_dir would be read from the variant's folder
    runs = {name: (work / slug(name), overrides or {}) for name, overrides in variants.items()}
    configs = {
        name: variant_config(args.config, overrides, out, args.minutes)
        for name, (out, overrides) in runs.items()
    }
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, future in [
            (name, pool.submit(train, configs[name], out)) for name, (out, _) in runs.items()
        ]:
            future.result()
            print(f"trained: {name}", file=sys.stderr)
    task, valid = task_of(next(iter(configs.values())))
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = {
            name: pool.submit(evaluate, out / "bundle", task, valid)
            for name, (out, _) in runs.items()
        }
        for name, (out, overrides) in runs.items():
            steps, averaging = run_log(out)
            rows.append((name, overrides, steps, averaging, scores[name].result()))
    print(table(task, rows, args))


def table(task: str, rows: list, args: argparse.Namespace) -> str:
    metric = "bleu" if task == "translate" else "rouge_l"
    others = ["chrf"] if task == "translate" else ["rouge_1", "rouge_2", "bleu", "distinct_2"]
    lines = [
        f"`{args.config}`, {args.minutes:g} min on one thread per variant, whole valid split, "
        "greedy",
        "",
        f"| variant | change | steps | **{metric}** | {' | '.join(others)} | averaging |",
        "|---|---|---|---|" + "---|" * len(others) + "---|",
    ]
    for name, overrides, steps, averaging, s in rows:
        change = ", ".join(f"`{k}: {v}`" for k, v in overrides.items()) or "base config"
        avg = "—"
        if averaging:
            avg = f"{averaging['averaged']:.2f} vs best {averaging['best_single']:.2f}"
        values = " | ".join(f"{s[o]:.2f}" for o in others)
        lines.append(f"| {name} | {change} | {steps} | **{s[metric]:.2f}** | {values} | {avg} |")
    return "\n".join(lines)


def decoding(args: argparse.Namespace) -> None:
    task, valid = args.task, args.data
    lines = [
        f"`{args.decoding}`, {task}, `{valid.parent.name}/{valid.name}`"
        + (f", first {args.max_examples}" if args.max_examples else ""),
        "",
        "| beam | length penalty | scores | sentences/s |",
        "|---|---|---|---|",
    ]
    for beam in args.beams:
        for alpha in args.alphas if beam > 1 else [0.0]:
            s = evaluate(args.decoding, task, valid, beam, alpha, args.max_examples)
            shown = ", ".join(
                f"{k} {v:.2f}" for k, v in s.items() if k in ("bleu", "chrf", "rouge_l", "rouge_2")
            )
            lines.append(f"| {beam} | {alpha:g} | {shown} | {s['sentences_per_second']:.1f} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="base training config (one task)")
    parser.add_argument("--variants", type=Path, help="YAML: name -> {dotted.key: value}")
    parser.add_argument("--minutes", type=float, default=10.0, help="budget per variant")
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "tune")
    parser.add_argument("--decoding", type=Path, help="a bundle: score decoding settings instead")
    parser.add_argument("--task", help="with --decoding")
    parser.add_argument("--data", type=Path, help="with --decoding: a valid TSV")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.6, 1.0])
    parser.add_argument("--max-examples", type=int, default=0, help="with --decoding: first N")
    args = parser.parse_args()
    if args.decoding:
        if not (args.task and args.data):
            parser.error("--decoding needs --task and --data")
        decoding(args)
    elif args.config and args.variants:
        tune(args)
    else:
        parser.error("give --config and --variants, or --decoding with --task and --data")


if __name__ == "__main__":
    main()
