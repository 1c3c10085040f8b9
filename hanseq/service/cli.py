"""``hanseq``: the engine's commands plus ``serve``.

    hanseq serve                      # the bundles in models/ on 127.0.0.1:50051
    HANSEQ_PORT=6000 hanseq serve --devices cpu --max-batch-size 32

Every setting is a --flag and an HANSEQ_* env var; ``hanseq serve --help`` lists them all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hanseq.engine import cli as engine_cli
from hanseq.engine.config import ConfigurationError
from hanseq.service import logs
from hanseq.service import settings as settings_module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hanseq", description="Korean seq2seq: train, generate, eval, serve over gRPC."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    engine_cli.add_commands(sub)
    serve = sub.add_parser(
        "serve",
        help="serve bundles over gRPC",
        description="Serve bundles over gRPC. Every setting also reads an HANSEQ_* env var, "
        "and HANSEQ_CONFIG may name a YAML file of settings (flags > env > file > defaults).",
    )
    settings_module.add_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return engine_cli.run(args)
    try:
        settings = settings_module.from_arguments(args)
    except ConfigurationError as e:
        print(f"hanseq serve: error: {e}", file=sys.stderr)
        return engine_cli.EXIT_USAGE
    logs.configure(settings.log_level, settings.log_format)
    from hanseq.service.server import serve

    try:
        return asyncio.run(serve(settings))
    except (FileNotFoundError, ConfigurationError) as e:
        print(f"hanseq serve: error: {e}", file=sys.stderr)
        return engine_cli.EXIT_USAGE
    except Exception as e:  # a worker that cannot load the models, say: say why, exit 1
        print(f"hanseq serve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
