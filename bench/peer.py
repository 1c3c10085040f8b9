"""hanseq against OpenNMT-py on ko->en: same data, tokenization, size and budget; one table.

    make peer-venv                                   # OpenNMT-py 3.5.1 in bench/peer/.venv
    .venv/bin/python bench/peer.py prepare --config configs/translate-v2.yaml
    .venv/bin/python bench/peer.py train --minutes 30
    .venv/bin/python bench/peer.py compare --model runs/translate-v2/bundle
    .venv/bin/python bench/peer.py batches               # what its batches hold
    .venv/bin/python bench/peer.py step-cost --model runs/translate-v2/bundle

``prepare`` writes the translate train/valid splits of a hanseq config, tokenized by that
run's own tokenizers (``<output_dir>/vocab``, written when its training starts), plus the
vocabularies and an OpenNMT-py config for the same architecture as the hanseq model: biLSTM
encoder, LSTM decoder with global "general" attention, input feeding, a bridge, tied decoder
embeddings; one OpenNMT-py corpus per origin weight, weighted to draw as hanseq does, read in
buckets that hold no repeated pair (``batches`` shows why). ``train`` runs onmt_train under
the same wall-clock budget and keeps the last checkpoint. ``compare`` decodes the same valid
inputs with both (hanseq also with int8 decoder products, and with the bundle's vocabulary
shortlist when it has one, fp32 and int8), greedy and beam 5, and prints BLEU, chrF,
sentences/s, parameter counts and the ratios as a Markdown table. ``step-cost`` times one
training step of each on the same random batch shape: what a step costs apart from what each
data pipeline puts in its batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hanseq.engine.bundle import Side, load_bundle  # noqa: E402
from hanseq.engine.config import Config, load_config  # noqa: E402
from hanseq.engine.data import read_tsv  # noqa: E402
from hanseq.engine.distributed import autocast  # noqa: E402
from hanseq.engine.heads import build_model  # noqa: E402
from hanseq.engine.metrics import bleu, chrf  # noqa: E402
from hanseq.engine.options import SearchOptions  # noqa: E402
from hanseq.engine.pipeline import Pipeline  # noqa: E402
from hanseq.engine.pointer import copy_maps  # noqa: E402
from hanseq.engine.precision import CHOICES, Choice, choose, describe_cpu  # noqa: E402
from hanseq.engine.precision import prepare as in_precision  # noqa: E402
from hanseq.engine.vocabulary import SPECIALS  # noqa: E402

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer" / ".venv" / "bin"
DEFAULT_WORK = HERE.parent / "runs" / "peer"
TASK = "translate"
BUCKET = 32_768  # OpenNMT-py examples sorted by length at a time (its default 262,144)


def run_dir(cfg: Config) -> Path:
    out = Path(cfg.training.output_dir)
    return out if out.is_absolute() else Path(cfg.base_dir) / out


def prepare(cfg_path: Path, work: Path) -> None:
    cfg = load_config(cfg_path)
    task = cfg.tasks[TASK]
    vocab_dir = run_dir(cfg) / "vocab"
    if not (vocab_dir / "done").exists():
        sys.exit(f"{vocab_dir}: no tokenizers yet; start `hanseq train --config {cfg_path}` first")
    source = Side.load(vocab_dir, "source", cfg.source)
    target = Side.load(vocab_dir, f"target.{TASK}", task.target)
    work.mkdir(parents=True, exist_ok=True)
    root = cfg.corpora_root()
    train, _ = read_tsv(root / task.train)
    weights = task.origin_weights
    groups: dict[str, list] = {}
    for ex in train:  # one OpenNMT corpus per sampling weight: it weights corpora, not origins
        groups.setdefault(_group(ex.origin, weights), []).append(ex)
    data: dict[str, dict] = {}
    for name, examples in groups.items():
        _write_pairs(work / f"train.{name}", examples, source, target, cfg)
        weight = weights.get(name, 1.0) if name != "rest" else 1.0
        data[name] = {
            "path_src": str(work / f"train.{name}.src"),
            "path_tgt": str(work / f"train.{name}.tgt"),
            "weight": max(1, round(len(examples) * weight / 1000)),
        }
    _warn_if_bucket_repeats(groups, data)
    valid, _ = read_tsv(root / task.valid)
    _write_pairs(work / "valid", valid, source, target, cfg)
    (work / "valid.raw").write_text("".join(f"{ex.source}\t{ex.target}\n" for ex in valid))
    data["valid"] = {"path_src": str(work / "valid.src"), "path_tgt": str(work / "valid.tgt")}
    _write_vocab(work / "vocab.src", source)
    _write_vocab(work / "vocab.tgt", target)
    (work / "onmt.yaml").write_text(yaml.safe_dump(_onmt_config(cfg, work, data), sort_keys=False))
    print(f"wrote {work}: {len(train)} training pairs in {len(groups)} corpora, {len(valid)} valid")


def _warn_if_bucket_repeats(groups: dict[str, list], data: dict[str, dict]) -> None:
    """OpenNMT-py's mixer takes ``weight`` examples of each corpus in turn: a corpus comes round
    again after len / weight turns. A bucket longer than that holds copies of its pairs, and
    the batcher drops the long ones' (``batches`` shows it)."""
    per_turn = sum(d["weight"] for d in data.values())
    name = min(groups, key=lambda n: len(groups[n]) / data[n]["weight"])
    cycle = len(groups[name]) / data[name]["weight"] * per_turn
    if cycle < BUCKET:
        print(f"warning: {name} repeats every {cycle:,.0f} draws, within a bucket of {BUCKET:,}")


def _group(origin: str, weights: dict[str, float]) -> str:
    return origin if origin in weights else "rest"


def _write_pairs(stem: Path, examples: list, source: Side, target: Side, cfg: Config) -> None:
    """Pieces joined by spaces; truncated to the hanseq limits (hanseq truncates, never drops)."""
    with open(f"{stem}.src", "w") as fs, open(f"{stem}.tgt", "w") as ft:
        for ex in examples:
            src = source.tokenizer.tokenize(ex.source)[: cfg.data.max_source_length - 1]
            tgt = target.tokenizer.tokenize(ex.target)[: cfg.data.max_target_length - 1]
            fs.write(" ".join(src) + "\n")
            ft.write(" ".join(tgt) + "\n")


def _write_vocab(path: Path, side: Side) -> None:
    """The hanseq vocabulary itself, so both models know exactly the same pieces."""
    pieces = [t for t in side.vocab.itos if t not in SPECIALS and not any(c.isspace() for c in t)]
    path.write_text("".join(p + "\n" for p in pieces))


def _onmt_config(cfg: Config, work: Path, data: dict) -> dict:
    m, t = cfg.model, cfg.training
    return {
        "save_data": str(work / "onmt"),
        "src_vocab": str(work / "vocab.src"),
        "tgt_vocab": str(work / "vocab.tgt"),
        "src_vocab_size": 100000,
        "tgt_vocab_size": 100000,
        "data": data,
        "save_model": str(work / "model"),
        # often enough that the budget's end loses few steps (train stops it by a signal)
        "save_checkpoint_steps": 100,
        "keep_checkpoint": 2,
        "valid_steps": t.valid_every,
        "seed": t.seed,
        # the hanseq model of the config, as OpenNMT-py spells it
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": m.rnn.upper(),
        "layers": m.encoder_layers,
        "hidden_size": m.hidden_size,
        "word_vec_size": m.embedding_dim,
        "global_attention": m.attention if m.attention != "bahdanau" else "mlp",
        "input_feed": int(m.input_feeding),
        "bridge": True,
        "share_decoder_embeddings": m.tie_embeddings,
        "dropout": [m.dropout],
        # the same optimisation
        "optim": "adam",
        # noam = linear warm-up then inverse square root, hanseq's inverse_sqrt, once its
        # d_model**-0.5 * warmup**-0.5 peak factor is undone
        "learning_rate": t.learning_rate * math.sqrt(m.hidden_size * t.warmup_steps),
        "warmup_steps": t.warmup_steps,
        "decay_method": "noam",
        "label_smoothing": t.label_smoothing,
        "max_grad_norm": t.clip_grad_norm,
        "batch_type": "sents",
        "batch_size": t.batch_size,
        "valid_batch_size": t.batch_size,
        "train_steps": 1_000_000,  # the wall-clock budget stops it
        "report_every": 50,
        # Like for like with hanseq's sampler (bench/README.md, "What OpenNMT-py drops"): its
        # batcher skips a source already in the batch it is building, and its default bucket
        # (262,144 weighted draws, sorted by length) holds several copies of the upweighted
        # pairs, so it dropped the copies of long pairs (few share their length) and kept the
        # short ones'. A bucket shorter than any corpus' cycle holds no copies; one process
        # reads the data, so each toolkit has one core.
        "bucket_size": BUCKET,
        "num_workers": 0,
    }


def train(work: Path, minutes: float, threads: int) -> None:
    """onmt_train until the budget is spent, then SIGTERM; the last checkpoint is the model."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = (work / "train.log").open("w")
    command = [str(PEER / "onmt_train"), "-config", str(work / "onmt.yaml")]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        proc.wait(timeout=60 * minutes)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    elapsed = (time.monotonic() - started) / 60
    latest = last_checkpoint(work)
    print(f"onmt_train ran {elapsed:.1f} min; last checkpoint: {latest}")


def last_checkpoint(work: Path) -> Path:
    found = sorted(work.glob("model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not found:
        sys.exit(f"{work}: no OpenNMT-py checkpoint; did `peer.py train` run?")
    return found[-1]


def compare(
    model: Path,
    work: Path,
    limit: int,
    threads: int,
    beams: list[int],
    alpha: float,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("fp32", "int8", "auto"),
) -> None:
    """Both toolkits decode the first ``limit`` valid inputs; hanseq at each of ``precisions``
    (``auto`` as the server picks on this CPU), over the whole vocabulary and the shortlist."""
    torch.set_num_threads(threads)
    bundle = load_bundle(model, shortlist=False)
    shortlisted = load_bundle(model)
    kinds = {"hanseq": bundle}
    if shortlisted.model.head(TASK).lexicon is not None:
        kinds["hanseq shortlist"] = shortlisted
    default = choose("auto", "cpu")
    chosen = list(dict.fromkeys(choose(p, "cpu").precision for p in precisions))
    systems = {
        f"{kind} {precision}": _at(loaded, precision)
        for kind, loaded in kinds.items()
        for precision in chosen
    }
    sources = (work / "valid.src").read_text().splitlines()
    cfg_valid = [line.split("\t") for line in (work / "valid.raw").read_text().splitlines()]
    n = min(limit or len(sources), len(sources))
    texts, refs = [s for s, _ in cfg_valid[:n]], [r for _, r in cfg_valid[:n]]
    (work / "compare.src").write_text("\n".join(sources[:n]) + "\n")
    checkpoint = last_checkpoint(work)
    tokenizer = next(iter(systems.values())).targets[TASK].tokenizer  # all share the bundle's
    rows = []
    for beam in beams:
        opts = SearchOptions(beam_size=beam, max_length=80, length_penalty=alpha)
        for system in systems.values():
            system.generate(TASK, texts[:64], opts)  # warm up (allocator, Mecab, BPE cache)
        outputs: dict[str, list[str]] = {}
        seconds: dict[str, list[float]] = {name: [] for name in [*systems, "OpenNMT-py"]}
        for _ in range(repeats):  # every system once per round: drift hits all alike
            for name, system in systems.items():
                start = time.perf_counter()
                outputs[name] = [g.text for g in system.generate(TASK, texts, opts)]
                seconds[name].append(time.perf_counter() - start)
            theirs, theirs_s = _onmt_decode(checkpoint, work, beam, threads, alpha)
            outputs["OpenNMT-py"] = [tokenizer.detokenize(t.split()) for t in theirs]
            seconds["OpenNMT-py"].append(theirs_s)
        rows += [(beam, name, outputs[name], statistics.median(seconds[name])) for name in seconds]
    params = {"hanseq": _hanseq_params(bundle), "OpenNMT-py": _onmt_params(checkpoint)}
    print(_table(rows, refs, params, n, threads, alpha, repeats, default))


def _at(bundle, precision: str) -> Pipeline:
    """A pipeline over a copy of ``bundle``'s model in ``precision`` (the fp32 one stays)."""
    if precision == "fp32":
        return Pipeline.from_bundle(bundle)
    converted = copy.deepcopy(bundle)
    in_precision(converted.model, precision)
    return Pipeline.from_bundle(converted)


def step_cost(
    model: Path, work: Path, src_len: int, tgt_len: int, repeats: int, bf16: bool
) -> None:
    """ms per training step of both toolkits on random batches of one shape (64 sentences):
    what a step costs apart from what each data pipeline puts in its batches. Every system
    once a round, medians of the rounds; ``bf16`` adds hanseq under bf16 autocast (fast only
    where the CPU has AMX: the trainer's ``mixed_precision: auto`` picks it there)."""
    torch.set_num_threads(1)
    bundle = load_bundle(model)
    systems = {}
    for copy_heads in (True, False):
        cfg = copy.deepcopy(bundle.model_cfg)
        cfg.copy = copy_heads
        source, target = bundle.source.vocab, bundle.targets[TASK].vocab
        net = build_model(cfg, len(source), {TASK: len(target)}, copy_maps(source, {TASK: target}))
        name = f"hanseq{' copy heads' if copy_heads else ''}"
        systems[name] = (net, None)
        if bf16:
            systems[f"{name} bf16"] = (net, torch.bfloat16)
    args = [str(last_checkpoint(work)), str(src_len), str(tgt_len)]
    times: dict[str, list[float]] = {name: [] for name in [*systems, "OpenNMT-py"]}
    for _ in range(repeats):
        for name, (net, dtype) in systems.items():
            times[name].append(_hanseq_step(net, src_len, tgt_len, dtype))
        times["OpenNMT-py"].append(_peer_json("onmt_step.py", args)["ms_per_step"])
    ms = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"training step, 64 x {src_len} source x {tgt_len} target pieces, one thread, teacher "
        f"forcing, medians of {repeats} rounds; CPU: {describe_cpu()}\n"
    )
    print("| system | ms/step | target tokens/s | vs OpenNMT-py |\n|---|---|---|---|")
    for name, value in ms.items():
        rate = 64 * tgt_len / (value / 1000)
        print(f"| {name} | {value:.0f} | {rate:,.0f} | {ms['OpenNMT-py'] / value:.2f}x |")


def batches(work: Path, buckets: int) -> None:
    """What OpenNMT-py's batches hold against what its mixer drew: with its defaults (as the
    earlier peer runs trained) and as ``prepare`` now configures it."""
    settings = [
        ("defaults: bucket 262,144, 2 workers", 262_144, 2),
        (f"peer.py: bucket {BUCKET:,}, 1 process", BUCKET, 1),
    ]
    rows = []
    for name, bucket, workers in settings:
        args = [str(work / "onmt.yaml"), str(buckets), str(bucket), str(workers)]
        counts = _peer_json("onmt_batches.py", args)
        d, b = counts["drawn"], counts["batched"]
        dropped = 1 - b["examples"] / d["examples"]
        rows.append(
            f"| {name} | {d['examples']:,} | {d['src'] / d['examples']:.2f} / "
            f"{d['tgt'] / d['examples']:.2f} | {b['examples']:,} | "
            f"{b['src'] / b['examples']:.2f} / {b['tgt'] / b['examples']:.2f} | {dropped:.1%} |"
        )
    print(f"OpenNMT-py's training iterator, {work / 'onmt.yaml'}, first {buckets} bucket(s)\n")
    print(
        "| setting | examples drawn | drawn source / target pieces a sentence | examples "
        "batched | batched source / target pieces a sentence | dropped |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def _hanseq_step(
    net, src_len: int, tgt_len: int, dtype: torch.dtype | None, steps: int = 20
) -> float:
    net.train()
    torch.manual_seed(0)
    src = torch.randint(10, 8000, (64, src_len))
    lengths = torch.full((64,), src_len)
    tgt = torch.randint(10, 8000, (64, tgt_len))
    keep = torch.ones(64, tgt_len, dtype=torch.bool)
    gold = torch.randint(10, 8000, (64 * tgt_len,))
    optim = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as the trainer's

    def step() -> None:
        with autocast(dtype, torch.device("cpu")):  # as the trainer enters it
            logits = net(TASK, src, lengths, tgt, 1.0, keep)
            loss = torch.nn.functional.cross_entropy(logits, gold, label_smoothing=0.1)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optim.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def _peer_json(script: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one of bench/peer/'s scripts in the peer venv; its last stdout line, as JSON."""
    command = [str(PEER / "python"), str(HERE / "peer" / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _onmt_decode(
    checkpoint: Path, work: Path, beam: int, threads: int, alpha: float
) -> tuple[list[str], float]:
    out = work / f"compare.beam{beam}.out"
    args = [
        *("-model", str(checkpoint), "-src", str(work / "compare.src"), "-output", str(out)),
        *("-beam_size", str(beam), "-batch_size", "64", "-max_length", "80"),
        *("-threads", str(threads)),
        # Its default is "avg" (score / length), not none: name the same penalty as hanseq's.
        *(
            ("-length_penalty", "wu", "-alpha", str(alpha))
            if alpha
            else ("-length_penalty", "none")
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    seconds = _peer_json("onmt_decode.py", args, env)["seconds"]
    return out.read_text().splitlines(), seconds


def _hanseq_params(bundle) -> int:
    """Encoder + the translate head, each tied weight once (what decoding translate uses)."""
    model = bundle.model
    seen, total = set(), 0
    for module in (model.encoder, model.head(TASK)):
        for p in module.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel()
    return total


def _onmt_params(checkpoint: Path) -> int:
    command = [
        str(PEER / "python"),
        "-c",
        "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu');"
        "ts = [v for part in ('model', 'generator') for v in c[part].values()];"
        "print(sum({t.data_ptr(): t.numel() for t in ts}.values()))",  # tied: counted once
        str(checkpoint),
    ]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def _table(
    rows: list,
    refs: list[str],
    params: dict,
    n: int,
    threads: int,
    alpha: float,
    repeats: int,
    default: Choice,
) -> str:
    lines = [
        f"ko->en valid, first {n} sentences; batch 64; {threads} thread(s); median of "
        f"{repeats} rounds; "
        f"length penalty {alpha}; parameters: hanseq {params['hanseq']:,}, "
        f"OpenNMT-py {params['OpenNMT-py']:,}; CPU: {describe_cpu()}; hanseq's default "
        f"precision here: {default.precision} ({default.why})",
        "",
        "| beam | system | BLEU | chrF | sentences/s |",
        "|---|---|---|---|---|",
    ]
    scores = {}
    for beam, system, hyps, seconds in rows:
        b, c, speed = bleu(hyps, refs), chrf(hyps, refs), n / seconds
        scores[(beam, system)] = (b, speed)
        lines.append(f"| {beam} | {system} | {b:.2f} | {c:.2f} | {speed:.1f} |")
    lines += [
        "",
        "| beam | system | BLEU minus OpenNMT-py's | speed / OpenNMT-py's |",
        "|---|---|---|---|",
    ]
    for beam in sorted({r[0] for r in rows}):
        peer_bleu, peer_speed = scores[(beam, "OpenNMT-py")]
        for system in sorted({r[1] for r in rows if r[1] != "OpenNMT-py"}):
            b, speed = scores[(beam, system)]
            lines.append(
                f"| {beam} | {system} | {b - peer_bleu:+.2f} | {speed / peer_speed:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="peer files (runs/peer)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenized splits, vocabularies, OpenNMT-py config")
    p.add_argument("--config", type=Path, required=True, help="the hanseq training config")
    t = sub.add_parser("train", help="train OpenNMT-py for a wall-clock budget")
    t.add_argument("--minutes", type=float, required=True)
    c = sub.add_parser("compare", help="decode the valid split with both; print the table")
    c.add_argument("--model", type=Path, required=True, help="the hanseq bundle")
    c.add_argument("--limit", type=int, default=0, help="first N valid sentences (0 = all)")
    c.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    c.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha, both systems")
    c.add_argument(
        "--repeats", type=int, default=3, help="timed rounds of every system; medians shown"
    )
    c.add_argument(
        "--precisions",
        nargs="+",
        choices=CHOICES,
        default=["fp32", "int8", "auto"],
        help="hanseq's decoding number formats (engine/precision.py; auto: as the server picks)",
    )
    b = sub.add_parser("batches", help="what OpenNMT-py's batches hold against its draws")
    b.add_argument("--buckets", type=int, default=1, help="buckets read per setting")
    s = sub.add_parser("step-cost", help="ms per training step of both on equal batches")
    s.add_argument("--model", type=Path, required=True, help="a hanseq bundle (its sizes)")
    s.add_argument("--src-len", type=int, default=13)
    s.add_argument("--tgt-len", type=int, default=12)
    s.add_argument("--repeats", type=int, default=3, help="rounds of every system; medians")
    s.add_argument("--bf16", action="store_true", help="hanseq under bf16 autocast too")
    args = parser.parse_args()
    if not (PEER / "onmt_train").exists():
        sys.exit(f"{PEER.parent}: no OpenNMT-py venv; run `make peer-venv` first")
    if args.command == "prepare":
        prepare(args.config, args.work)
    elif args.command == "batches":
        batches(args.work, args.buckets)
    elif args.command == "step-cost":
        step_cost(args.model, args.work, args.src_len, args.tgt_len, args.repeats, args.bf16)
    elif args.command == "train":
        train(args.work, args.minutes, args.threads)
    else:
        compare(
            args.model,
            args.work,
            args.limit,
            args.threads,
            args.beams,
            args.length_penalty,
            args.repeats,
            tuple(args.precisions),
        )


if __name__ == "__main__":
    main()
