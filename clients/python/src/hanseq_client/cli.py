"""``hanseq-client``: call a hanseq server from the shell.

Text comes as an argument, or one input per line on stdin (sent in batches, printed in order;
an empty line gives an empty line). Exit status: 0 done; 1 the call failed (unreachable,
overloaded, deadline, server error); 2 the input or the command line is invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hanseq_client.channel import DEFAULT_TARGET, TLS
from hanseq_client.client import Client
from hanseq_client.errors import HanseqError, InvalidInput
from hanseq_client.inputs import Turn
from hanseq_client.results import Models, Result
from hanseq_client.version import __version__

TASKS = ("translate", "respond", "summarize")
EPILOG = """\
examples:
  hanseq-client translate '파일을 열 수 없습니다.'
  printf '안녕하세요\\n감사합니다\\n' | hanseq-client translate --beam 4 --json
  hanseq-client respond --user '안녕' --service '안녕하세요!' '오늘 뭐 해?'
  hanseq-client translate '사과 바다' --plot-attention attention.png
  hanseq-client translate --beam 4 --n-best 3 '새 문서를 만듭니다.'
  hanseq-client stream respond '주말에 뭐 할까?'
  hanseq-client --target dns:///hanseq.hanseq.svc.cluster.local:50051 models
  hanseq-client reload
  hanseq-client load keyphrase                     (admin: one bundle, as its serving.yaml says)
  hanseq-client translate --model hanseq-multitask --model-version 20261201-133120 '안녕'
  hanseq-client health

exit status: 0 done; 1 the call failed (unreachable, overloaded, deadline, server error);
2 the input or the command line is invalid.
"""


class Exit(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        with _client(args) as client:
            return args.run(client, args)
    except Exit as e:
        print(f"hanseq-client: {e.message}", file=sys.stderr)
        return e.status
    except HanseqError as e:
        print(f"hanseq-client: {e}", file=sys.stderr)
        return 2 if isinstance(e, InvalidInput) else 1
    except KeyboardInterrupt:
        return 130


# -- the command line ------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse fills ``generate TASK [TEXT]`` before it reads the flags between them, so in
    ``generate translate --beam 4 '...'`` the text is left over: it is TEXT."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if len(extra) == 1 and getattr(args, "text", "") is None and not extra[0].startswith("-"):
        args.text = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hanseq-client",
        description="Call a hanseq server: translate, respond, summarize, or any task by name.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hanseq-client {__version__}")
    _connection_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = argparse.ArgumentParser(add_help=False)
    _connection_flags(connection, defaults=False)
    for task in TASKS:
        sub = commands.add_parser(task, parents=[connection], help=f"the {task} task")
        if task == "respond":
            _history_flags(sub)
        _task_flags(sub)
        sub.set_defaults(run=run_task, task=task)
    sub = commands.add_parser("generate", parents=[connection], help="any task by name")
    sub.add_argument("task", metavar="TASK", help="a task the server serves (see `models`)")
    _task_flags(sub)
    sub.set_defaults(run=run_task)
    sub = commands.add_parser(
        "stream", parents=[connection], help="print a task's output as it is decoded"
    )
    sub.add_argument("task", metavar="TASK", help="a task the server serves (see `models`)")
    sub.add_argument("text", metavar="TEXT", help="the input")
    _decoding_flags(sub)
    sub.set_defaults(run=run_stream)
    sub = commands.add_parser("models", parents=[connection], help="tasks, models and limits")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_models)
    sub = commands.add_parser(
        "reload", parents=[connection], help="load the server's bundles again (admin)"
    )
    sub.set_defaults(run=run_reload)
    for name, run, what in (
        ("load", run_load, "load or reload one bundle, or one version of it (admin)"),
        ("unload", run_unload, "stop serving one bundle, or one version of it (admin)"),
    ):
        sub = commands.add_parser(name, parents=[connection], help=what)
        sub.add_argument("name", metavar="NAME", help="the bundle (its directory in models/)")
        sub.add_argument(
            "model_version",
            metavar="VERSION",
            nargs="?",
            default="",
            help="one version (default: as its serving.yaml says / every version)",
        )
        sub.set_defaults(run=run)
    sub = commands.add_parser(
        "health",
        parents=[connection],
        help="is it serving? the whole server and each task (exit 1 unless all SERVING)",
    )
    sub.add_argument(
        "tasks",
        metavar="TASK",
        nargs="*",
        help="only these tasks (default: the server and every task)",
    )
    sub.set_defaults(run=run_health)
    return parser


def _connection_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """On the main parser (with defaults) and on every command (without, so that a flag given
    before the command is not reset by the command's parser)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    env = os.environ.get
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(env("HANSEQ_TARGET", DEFAULT_TARGET)),
        help=f"host:port or dns:///name:port (env HANSEQ_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout", type=float, default=default(30.0), help="deadline per call, seconds (30)"
    )
    group.add_argument(
        "--token",
        default=default(env("HANSEQ_TOKEN")),
        help="bearer token (env HANSEQ_TOKEN; prefer the env var: flags show in `ps`)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="TLS with the system's trusted roots",
    )
    group.add_argument("--ca", default=default(None), help="PEM file of roots (implies --tls)")
    group.add_argument("--cert", default=default(None), help="client certificate (mutual TLS)")
    group.add_argument("--key", default=default(None), help="client private key (mutual TLS)")
    group.add_argument(
        "--server-name", default=default(None), help="name to check in the server's certificate"
    )


def _history_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("conversation (earlier turns, in the order given)")
    for flag, from_user in (("--user", True), ("--service", False)):
        group.add_argument(
            flag,
            dest="history",
            action=_TurnAction,
            from_user=from_user,
            default=[],
            metavar="TEXT",
            help=f"an earlier turn said by the {flag[2:]}",
        )


class _TurnAction(argparse.Action):
    def __init__(self, *args: Any, from_user: bool, **kw: Any):  # argparse.Action's arguments
        super().__init__(*args, **kw)
        self.from_user = from_user

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        turns = [*getattr(namespace, self.dest, []), Turn(str(values), self.from_user)]
        setattr(namespace, self.dest, turns)


def _task_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "text",
        nargs="?",
        metavar="TEXT",
        help="the input; without it (or with -), one input per line of stdin",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per input: text, score, alternatives, timings...",
    )
    out.add_argument(
        "--plot-attention",
        metavar="FILE.png",
        help="draw the attention of one input as a heatmap (needs the plot extra)",
    )
    out.add_argument("--font", help="font file for --plot-attention (default: one with Hangul)")
    out.add_argument(
        "--batch-size", type=_positive, default=32, help="stdin lines per call (default 32)"
    )
    out.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        help="calls in flight at once for stdin input (default 4)",
    )
    _decoding_flags(parser)


def _decoding_flags(parser: argparse.ArgumentParser) -> None:
    which = parser.add_argument_group("model (left out: the server's default for the task)")
    which.add_argument("--model", metavar="NAME", help="the bundle to answer (see `models`)")
    which.add_argument("--model-version", metavar="VERSION", help="one served version of --model")
    dec = parser.add_argument_group("decoding (left out: the server's default)")
    dec.add_argument("--beam", dest="beam_size", type=int, help="beam size; 1 = greedy")
    dec.add_argument(
        "--n-best", type=int, help="hypotheses returned (<= beam; text output: tab-separated)"
    )
    dec.add_argument("--max-length", type=int, help="output tokens at most")
    dec.add_argument("--min-length", type=int, help="output tokens at least")
    dec.add_argument("--length-penalty", type=float, help="GNMT alpha (0 = none)")
    dec.add_argument("--no-repeat-ngram", type=int, help="never repeat an n-gram of this size")
    dec.add_argument("--sample", action="store_true", help="sample instead of greedy/beam")
    dec.add_argument("--temperature", type=float, help="sampling temperature")
    dec.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    dec.add_argument("--top-p", type=float, help="nucleus sampling mass")
    dec.add_argument("--seed", type=int, help="sampling seed (same seed, same output)")
    dec.add_argument(
        "--attention",
        dest="return_attention",
        action="store_true",
        help="include tokens and the attention matrix (in --json)",
    )
    dec.add_argument("--no-cache", action="store_true", help="bypass the server's cache")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


OPTION_FLAGS = (
    "beam_size",
    "n_best",
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram",
    "sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "return_attention",
    "no_cache",
    "model",  # not decoding options: which bundle and version answers (the client's kwargs)
    "model_version",
)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags given: the server's defaults stay in charge of the rest. A zero is
    given (``--beam 0``) and goes to the server, which says what is wrong with it."""
    options = {}
    for name in OPTION_FLAGS:
        value = getattr(args, name)
        if value is not None and value is not False:  # not `in (None, False)`: 0 == False
            options[name] = value
    return options


def _client(args: argparse.Namespace) -> Client:
    tls: TLS | bool | None = None
    if args.ca or args.cert or args.key or args.server_name:
        tls = TLS(args.ca, args.cert, args.key, args.server_name)
    elif args.tls:
        tls = True
    try:
        return Client(args.target, timeout=args.timeout, token=args.token, tls=tls)
    except (OSError, ValueError) as e:
        raise Exit(2, str(e)) from None


# -- the commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineError:
    """An input line that got no result: why, with its line number."""

    message: str


def run_task(client: Client, args: argparse.Namespace) -> int:
    options = _options(args)
    if args.return_attention and not args.json:
        raise Exit(2, "--attention shows in --json output: add --json, or draw it with "
                   "--plot-attention FILE")  # fmt: skip
    if args.plot_attention:
        options["return_attention"] = True
        _check_plotting(args.font, args.plot_attention)  # before the call: not wasted
    if args.text is not None and args.text != "-":
        results: Iterable[Result | LineError | None] = [_one(client, args, args.text, options)]
    else:
        results = _batched(client, args, _stdin_lines(args), options)
    drawn, failed = None, 0
    for line, result in enumerate(results, 1):  # printed as they come: progress shows
        if isinstance(result, LineError):  # its error on stderr, an empty line in its place
            print(f"hanseq-client: {result.message}", file=sys.stderr)
            failed += 1
            result = None
        _print(result, args.json)
        if result is not None and result.truncated:
            _say_truncated(client, args, line)
        drawn = result or drawn
    if args.plot_attention and drawn is not None:
        _plot(drawn, args)
    if failed:
        print(f"hanseq-client: {failed} input line(s) got no result (above)", file=sys.stderr)
        return 2
    return 0


def _say_truncated(client: Client, args: argparse.Namespace, line: int) -> None:
    """The output of a cut input is printed as any other; stderr says it was cut, and to how
    many tokens (asked of the server once)."""
    limit = getattr(args, "_source_limit", None)
    if limit is None:
        tasks = {t.task: t for t in client.models().tasks}
        limit = args._source_limit = tasks[args.task].max_source_tokens if args.task in tasks else 0
    where = "" if args.text is not None and args.text != "-" else f"line {line}: "
    cut = f"its first {limit} tokens" if limit else "its beginning"
    print(f"hanseq-client: {where}input longer than the model reads: only {cut} were decoded",
          file=sys.stderr)  # fmt: skip


def _stdin_lines(args: argparse.Namespace) -> list[str | LineError]:
    """One input per line; a line that is not UTF-8 is an error of its own, not the run's."""
    if args.text is None and sys.stdin.isatty():
        raise Exit(2, "give TEXT, or pipe one input per line on stdin")
    if getattr(args, "history", None):
        raise Exit(2, "--user/--service go with one TEXT argument, not with stdin")
    lines: list[str | LineError] = []
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            lines.append(LineError(f"line {number}: not valid UTF-8 (byte {e.start + 1})"))
    filled = sum(1 for line in lines if isinstance(line, str) and line.strip())
    if args.plot_attention and filled != 1:
        raise Exit(2, "--plot-attention draws one input; give exactly one")
    return lines


def _one(client: Client, args: argparse.Namespace, text: str, options: dict[str, Any]) -> Result:
    if args.task == "respond":
        return client.respond(text, getattr(args, "history", []), **options)
    return client.generate(args.task, text, **options)


def _batched(
    client: Client, args: argparse.Namespace, lines: list[str | LineError], options: dict[str, Any]
) -> Iterator[Result | LineError | None]:
    """Results in line order (None for an empty line, a LineError for a refused one); a few
    batches are in flight at once."""
    texts = {i: line for i, line in enumerate(lines) if isinstance(line, str) and line.strip()}
    filled = sorted(texts)
    chunks = [filled[i : i + args.batch_size] for i in range(0, len(filled), args.batch_size)]

    def send(chunk: list[int]) -> dict[int, Result | LineError]:
        return _send_chunk(client, args.task, texts, chunk, options)

    answered: dict[int, Result | LineError] = {}
    done = 0  # lines yielded so far
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for replies in pool.map(send, chunks):
            answered.update(replies)
            while done < len(lines) and (done in answered or done not in texts):
                line = lines[done]
                yield answered.pop(done, line if isinstance(line, LineError) else None)
                done += 1
    for line in lines[done:]:
        yield line if isinstance(line, LineError) else None


def _send_chunk(
    client: Client, task: str, texts: dict[int, str], chunk: list[int], options: dict[str, Any]
) -> dict[int, Result | LineError]:
    """One GenerateBatch call for these lines; a line the server refuses gets its own error
    (texts[k] renamed to its line), the others their results."""
    try:
        items = client.batch_items(task, [texts[i] for i in chunk], **options)
    except HanseqError as e:  # the call itself failed: every line of it would
        e.args = (_name_lines(str(e), chunk),)
        raise
    out: dict[int, Result | LineError] = {}
    for line, item in zip(chunk, items, strict=True):
        out[line] = (
            LineError(_name_lines(str(item), chunk)) if isinstance(item, HanseqError) else item
        )
    return out


def _name_lines(message: str, chunk: list[int]) -> str:
    return re.sub(r"texts\[(\d+)\]", lambda m: f"line {chunk[int(m.group(1))] + 1}", message)


def _print(result: Result | None, as_json: bool) -> None:
    if as_json:
        print(json.dumps(None if result is None else result.to_dict(), ensure_ascii=False))
    else:
        texts = [] if result is None else [result.text, *(a.text for a in result.alternatives)]
        print("\t".join(texts))  # with --n-best: the hypotheses, best first, tab-separated
    sys.stdout.flush()


def run_stream(client: Client, args: argparse.Namespace) -> int:
    """The new text of each update as it comes, then a newline."""
    for update in client.stream(args.task, args.text, **_options(args)):
        print(update.delta, end="", flush=True)
    print()
    return 0


def run_reload(client: Client, args: argparse.Namespace) -> int:
    """The server loads its bundles again and switches; prints what serves now."""
    for t in client.reload():
        print(f"{t.task}\t{t.model_name or t.model_id}\t{t.model_version}")
    return 0


def run_load(client: Client, args: argparse.Namespace) -> int:
    """Prints each version started or reloaded."""
    for m in client.load_model(args.name, args.model_version):
        print(f"loaded\t{m.name}\t{m.version}\t{','.join(t.task for t in m.tasks)}")
    return 0


def run_unload(client: Client, args: argparse.Namespace) -> int:
    """Prints what still serves."""
    for m in client.unload_model(args.name, args.model_version):
        print(f"serving\t{m.name}\t{m.version}\t{','.join(t.task for t in m.tasks)}")
    return 0


def run_health(client: Client, args: argparse.Namespace) -> int:
    """One line per name: ``server`` (the whole server) and each task, with its status."""
    names: list[str | None] = list(args.tasks)
    if not names:
        names = [None]
        # Starting or draining, ListModels is refused: health still answers for the server.
        with contextlib.suppress(HanseqError):
            names += [t.task for t in client.models().tasks]
    statuses = [(name or "server", client.health(name)) for name in names]
    for name, status in statuses:
        print(f"{name}\t{status}")
    return 0 if all(status == "SERVING" for _, status in statuses) else 1


def run_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps(models.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(_models_table(models))
    return 0


def _models_table(models: Models) -> str:
    rows = [("task", "model", "version", "metric", "valid score", "context", "defaults")]
    for t in models.tasks:
        score = t.valid_scores.get(t.metric)
        defaults = ",".join(f"{k}={v:g}" for k, v in t.defaults.items())
        rows.append(
            (
                t.task,
                t.model_name or t.model_id,
                t.model_version,
                t.metric,
                "" if score is None else f"{score:.2f}",
                f"{t.context_turns} turns" if t.context_turns else "none",
                defaults,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    limits = ", ".join(f"{k}={v}" for k, v in asdict(models.limits).items())
    return "\n".join([*lines, "", *_served_lines(models), f"limits: {limits}"])


def _served_lines(models: Models) -> list[str]:
    """Every served version, where there is more than the one row per task above."""
    if len(models.models) <= 1:
        return []
    out = ["served:"]
    for m in models.models:
        default = f"default for {','.join(m.default_for)}" if m.default_for else "named only"
        share = f", {m.traffic_share:.0%} of calls naming no version" if m.traffic_share else ""
        tasks = ",".join(t.task for t in m.tasks)
        out.append(f"  {m.name} {m.version}: {tasks}; {default}{share}; {m.workers} worker(s)")
    return [*out, ""]


# -- plotting --------------------------------------------------------------------------------


def _check_plotting(font: str | None, path: str) -> None:
    """Before calling the server: is matplotlib there, a font that can draw Hangul, a format
    we write, and a folder to write it in?"""
    plot = _plot_module()
    try:
        plot.find_font(["한"], font)
        plot.image_format(path)
    except (plot.FontNotFound, ValueError) as e:
        raise Exit(2, f"--plot-attention: {e}") from None
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise Exit(2, f"--plot-attention: {folder} is not a folder; create it first")


def _plot(result: Result, args: argparse.Namespace) -> None:
    plot = _plot_module()
    if result.attention is None:
        raise Exit(1, "the server returned no attention for this input")
    title = f"{args.task}: {result.model_id} {result.model_version}"
    try:
        path = plot.plot_attention(
            result.attention, args.plot_attention, font=args.font, title=title
        )
    except OSError as e:
        raise Exit(
            2, f"--plot-attention: cannot write {args.plot_attention}: {e.strerror}"
        ) from None
    print(f"hanseq-client: attention plot written to {path}", file=sys.stderr)


def _plot_module() -> Any:
    try:
        from hanseq_client import plot

        plot._pyplot()
    except ImportError as e:
        raise Exit(2, str(e)) from None
    return plot


if __name__ == "__main__":  # python -m hanseq_client.cli
    sys.exit(main())
