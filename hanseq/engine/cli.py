"""``hanseq train | generate | eval`` (``hanseq serve`` is added by service.cli).

    hanseq train --config configs/multitask.yaml
    hanseq generate --model runs/multitask/bundle --task translate --beam 5 < in.txt > out.txt
    hanseq eval --model runs/multitask/bundle --task translate --data valid.tsv

Errors a user can fix (bad config, missing file, damaged bundle, unknown task) print one line
and exit with status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from tqdm import tqdm

from hanseq.engine.config import ConfigurationError, MixedPrecision

if TYPE_CHECKING:  # the commands import these lazily: torch loads only when a model does
    from hanseq.engine.bundle import Bundle
    from hanseq.engine.options import SearchOptions
    from hanseq.engine.pipeline import Generation, Pipeline

EXIT_USAGE = 2


def _search_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument(
        "--beam",
        type=int,
        default=None,
        help="beam size; 1 = greedy (default: the bundle's for the task, else 1)",
    )
    g.add_argument("--n-best", type=int, default=1, help="hypotheses per input (generate --json)")
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="max output tokens (default: the bundle's max_target_length)",
    )
    g.add_argument("--min-length", type=int, default=0, help="min output tokens (default 0)")
    g.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="GNMT length penalty alpha; 0 = raw log-probability (default: the bundle's, else 0)",
    )
    g.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=None,
        help="never repeat an n-gram of this size (default: the bundle's, else 0: off)",
    )
    g.add_argument("--sample", action="store_true", help="sample instead of greedy/beam")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k best (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible output)")
    g.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="fp32",
        help="number format of decoding (default fp32, the model card's): bf16 (fast on CPUs "
        "with AMX), int8 decoder products (CPU), auto (as the server picks: "
        "bf16 where the CPU has AMX, else fp32); bench/README.md has speeds and scores",
    )
    g.add_argument(
        "--int8",
        dest="precision",
        action="store_const",
        const="int8",
        help="the same as --precision int8",
    )
    g.add_argument(
        "--no-shortlist",
        action="store_true",
        help="greedy and beam search over the whole target vocabulary, not the bundle's "
        "per-batch shortlist (slower; the scores of bench/README.md)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The engine's subcommands; the service's CLI mounts them next to ``serve``."""
    p = sub.add_parser("train", help="train a bundle from a YAML config")
    p.add_argument("--config", required=True, help="YAML training config (see configs/)")
    p.add_argument("--strict", action="store_true", help="a malformed data line is an error")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh even if output_dir has a checkpoint",
    )
    p.add_argument("--max-steps", type=int, help="override training.max_steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="override training.max_minutes: this invocation's wall-clock budget (0: none); "
        "then it validates, averages and writes the bundle, and a rerun resumes",
    )
    p.add_argument("--output-dir", help="override training.output_dir")
    p.add_argument(
        "--mixed-precision",
        choices=get_args(MixedPrecision),
        help="override training.mixed_precision (auto: bf16 on CPUs with AMX)",
    )

    p = sub.add_parser("generate", help="one output line per input line (stdin -> stdout)")
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument("--task", required=True, help="task head, e.g. translate, respond, summarize")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (text, score, n-best, tokens)",
    )
    p.add_argument("--attention", action="store_true", help="with --json: include attention")
    _search_flags(p)

    p = sub.add_parser("eval", help="score a bundle on a TSV file; prints one JSON object")
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument("--task", required=True, help="task head to evaluate")
    p.add_argument("--data", required=True, help="TSV: source<TAB>target[<TAB>origin]")
    p.add_argument("--max-examples", type=int, default=0, help="only the first N (0: all)")
    p.add_argument("--by-origin", action="store_true", help="also score each origin apart")
    p.add_argument(
        "--context",
        metavar="JSONL",
        help="respond: the history of multi-turn pairs (e.g. dialogue-ko/valid.context.jsonl), "
        "read as the bundle was trained to (its context_turns)",
    )
    _search_flags(p)
    _add_export(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a bundle, verified, optionally with fp16 weights")
    p.add_argument("--model", required=True, help="bundle directory to read (verified)")
    p.add_argument("--output", required=True, help="bundle directory to write")
    p.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    short = p.add_mutually_exclusive_group()
    short.add_argument(
        "--shortlist",
        metavar="CONFIG",
        help="(re)build the vocabulary-shortlist tables from the train splits this training "
        "config names (default: keep the bundle's own, if any)",
    )
    short.add_argument("--no-shortlist", action="store_true", help="leave the shortlist tables out")
    p.add_argument(
        "--decoding",
        action="append",
        default=[],
        metavar="TASK:KEY=VALUE[,KEY=VALUE]",
        help="set a task's default decoding options (beam_size, length_penalty, "
        "no_repeat_ngram), used where a request sets none; TASK:none clears them. Repeatable.",
    )
    p.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="TASK=BUNDLE",
        help="take (or add) TASK's head (weights, target side, shortlist, scores) from BUNDLE, "
        "trained from the same bundle with freeze_encoder; refused unless its encoder is "
        "--model's bit for bit. Repeatable; applied before --decoding and --shortlist. The "
        "output gets a version of its own (the export's time).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hanseq", description=__doc__.split("\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run an engine subcommand; a user's mistake is one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from hanseq.engine.bundle import BundleError
    from hanseq.engine.data import DataError
    from hanseq.engine.dialogue import ContextError
    from hanseq.engine.options import InvalidOptions
    from hanseq.engine.pipeline import UnknownTask

    try:
        return COMMANDS[args.command](args)
    except (
        ConfigurationError,
        BundleError,
        DataError,
        ContextError,
        UnknownTask,
        InvalidOptions,
        FileNotFoundError,
    ) as e:
        print(f"hanseq {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_train(args: argparse.Namespace) -> int:
    from hanseq.engine.config import load_config
    from hanseq.engine.stopping import TrainingInterrupted
    from hanseq.engine.training import train

    cfg = load_config(args.config)
    cfg.data.strict = cfg.data.strict or args.strict
    if args.max_steps:
        cfg.training.max_steps = args.max_steps
    if args.max_minutes is not None:
        if args.max_minutes < 0:
            raise ConfigurationError("--max-minutes: must be >= 0 (0: no budget)")
        cfg.training.max_minutes = args.max_minutes
    if args.output_dir:
        cfg.training.output_dir = str(Path(args.output_dir).resolve())
    if args.mixed_precision:
        cfg.training.mixed_precision = args.mixed_precision
    try:
        train(cfg, resume=not args.no_resume)
    except TrainingInterrupted as e:
        print(f"hanseq train: {e}", file=sys.stderr)
        return 128 + e.signum  # as the shell reports a process the signal ended
    return 0


def _options(args: argparse.Namespace, max_length: int, defaults: dict[str, Any]) -> SearchOptions:
    """Flags -> SearchOptions; an unset flag takes the bundle's default for the task (with
    --sample the beam stays 1: sampling draws one hypothesis)."""
    from hanseq.engine.options import SearchOptions

    def pick(flag: str, key: str, fallback: Any) -> Any:
        value = getattr(args, flag)
        return value if value is not None else defaults.get(key, fallback)

    beam = args.beam if args.beam is not None else (1 if args.sample else None)
    return SearchOptions(
        beam_size=beam if beam is not None else int(defaults.get("beam_size", 1)),
        n_best=args.n_best,
        max_length=args.max_length if args.max_length is not None else max_length,
        min_length=args.min_length,
        length_penalty=pick("length_penalty", "length_penalty", 0.0),
        no_repeat_ngram=pick("no_repeat_ngram", "no_repeat_ngram", 0),
        sampling=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        return_attention=getattr(args, "attention", False),
    )


def _pipeline(args: argparse.Namespace) -> tuple[Bundle, Pipeline, SearchOptions]:
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.distributed import resolve_device
    from hanseq.engine.pipeline import Pipeline
    from hanseq.engine.precision import choose, prepare

    device = resolve_device(args.device)
    bundle = load_bundle(args.model, device, not args.no_shortlist)
    try:
        chosen = choose(args.precision, str(device))
        prepare(bundle.model, chosen.precision)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"hanseq: --precision: {e}") from None
    if args.precision == "auto":
        print(f"decoding in {chosen.precision} ({chosen.why})", file=sys.stderr)
    pipeline = Pipeline.from_bundle(bundle, args.batch_size)
    pipeline.check_task(args.task)
    max_length = bundle.manifest.get("max_target_length", 100)
    return bundle, pipeline, _options(args, max_length, bundle.decoding(args.task))


def _run(
    pipeline: Pipeline, task: str, texts: list[str], opts: SearchOptions, desc: str
) -> list[Generation]:
    with tqdm(
        total=len(texts),
        desc=desc,
        unit="sent",
        file=sys.stderr,
        disable=not sys.stderr.isatty() and len(texts) < 1000,
    ) as bar:
        return pipeline.generate(task, texts, opts, progress=bar.update)


def cmd_generate(args: argparse.Namespace) -> int:
    _, pipeline, opts = _pipeline(args)
    texts = [line.rstrip("\r\n") for line in sys.stdin]
    for out in _run(pipeline, args.task, texts, opts, "generate"):
        if args.json:
            record = {
                "text": out.text,
                "score": out.score,
                "tokens": out.tokens,
                "source_tokens": out.source_tokens,
                "alternatives": [{"text": t, "score": s} for t, s in out.alternatives],
            }
            if args.attention:
                record["attention"] = out.attention
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(out.text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hanseq.engine.data import read_tsv
    from hanseq.engine.metrics import task_scores

    bundle, pipeline, opts = _pipeline(args)
    examples, report = read_tsv(Path(args.data))
    if args.context:
        from hanseq.engine.data import with_context
        from hanseq.engine.dialogue import read_histories

        turns = bundle.context_turns(args.task)
        examples = with_context(examples, read_histories(Path(args.context)), turns)[0]
    examples = examples[: args.max_examples or None]
    started = time.perf_counter()
    outputs = _run(pipeline, args.task, [ex.source for ex in examples], opts, "eval")
    seconds = time.perf_counter() - started
    hyps = [o.text for o in outputs]
    result = {
        "task": args.task,
        "bundle": bundle.id,
        "version": bundle.version,
        "data": args.data,
        "examples": len(examples),
        "skipped_lines": report.skipped,
        "beam": opts.beam_size,
        "length_penalty": opts.length_penalty,
        "no_repeat_ngram": opts.no_repeat_ngram,
        **task_scores(args.task, hyps, [e.target for e in examples]),
        "sentences_per_second": len(examples) / seconds if seconds else 0.0,
    }
    if args.by_origin:
        result["by_origin"] = {
            origin: task_scores(
                args.task,
                [h for h, e in zip(hyps, examples, strict=True) if e.origin == origin],
                [e.target for e in examples if e.origin == origin],
            )
            for origin in sorted({e.origin for e in examples})
        }
    print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from hanseq.engine.bundle import load_bundle, save_bundle
    from hanseq.engine.manifest import new_version

    bundle = load_bundle(args.model)
    if args.head:
        from hanseq.engine.compose import take_heads

        take_heads(bundle, _head_flags(args.head))
    heads = {t: bundle.model.head(t) for t in bundle.tasks}
    lexicons = {t: h.lexicon for t, h in heads.items() if h.lexicon is not None}
    if args.shortlist:
        from hanseq.engine.config import load_config
        from hanseq.engine.training import lexicons_for

        lexicons = lexicons_for(load_config(args.shortlist), bundle.source, bundle.targets)
    if args.no_shortlist:
        lexicons = {}
    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        print(f"hanseq export: error: {output} exists and is not empty", file=sys.stderr)
        return EXIT_USAGE
    info = {
        k: v
        for k, v in bundle.manifest.items()
        if k not in ("format_version", "model", "source", "sha256")
    }
    info["tasks"] = {
        t: {k: v for k, v in e.items() if k not in ("tokenizer", "files", "shortlist")}
        for t, e in bundle.manifest["tasks"].items()
    }
    if args.head:  # new weights under the old version would be served (and cached) as the old
        info |= new_version()
    for task, decoding in _decoding_flags(args.decoding, bundle.tasks).items():
        info["tasks"][task].pop("decoding", None)
        if decoding:
            info["tasks"][task]["decoding"] = decoding
    dtype = torch.float16 if args.fp16 else torch.float32
    save_bundle(
        output, bundle.model, bundle.model_cfg, bundle.source, bundle.targets, info, dtype, lexicons
    )
    load_bundle(output)  # what we wrote must load
    size = (output / "weights.safetensors").stat().st_size / 2**20
    tables = f", shortlist tables for {', '.join(lexicons)}" if lexicons else ""
    print(f"wrote {output} ({size:.1f} MB of weights, {str(dtype).split('.')[-1]}{tables})")
    return 0


def _head_flags(flags: list[str]) -> dict[str, Bundle]:
    """``TASK=BUNDLE`` flags -> the donor bundle of each task (loaded, verified)."""
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.options import InvalidOptions

    out = {}
    for flag in flags:
        task, sep, path = flag.partition("=")
        if not sep or not path:
            raise InvalidOptions(f"--head {flag}: expected TASK=BUNDLE")
        out[task] = load_bundle(path)
    return out


def _decoding_flags(flags: list[str], tasks: list[str]) -> dict[str, dict[str, float | int]]:
    """``TASK:KEY=VALUE,...`` flags -> checked defaults per task ({} for ``TASK:none``)."""
    from hanseq.engine.options import InvalidOptions, decoding_defaults

    out = {}
    for flag in flags:
        task, _, spec = flag.partition(":")
        if task not in tasks:
            raise InvalidOptions(f"--decoding {flag}: the bundle has no task {task!r}")
        try:
            pairs = [] if spec == "none" else [p.split("=", 1) for p in spec.split(",")]
            raw = {k.strip(): float(v) if "." in v else int(v) for k, v in pairs}
        except ValueError:
            raise InvalidOptions(
                f"--decoding {flag}: expected TASK:KEY=VALUE[,KEY=VALUE]"
            ) from None
        out[task] = decoding_defaults(raw)
    return out


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "export": cmd_export}

if __name__ == "__main__":
    sys.exit(main())
