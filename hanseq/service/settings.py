"""Server settings: one typed object. Each field has a safe default, an ``HANSEQ_*`` env var
and a ``--flag`` of ``hanseq serve``; an optional YAML file (``HANSEQ_CONFIG``) sits between.

Precedence, lowest first: default < YAML file < environment < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hanseq.engine.config import ConfigurationError

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"  # hanseq/service/ -> the repository


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _f("127.0.0.1", "address to listen on (0.0.0.0 in a container)")
    port: int = _f(50051, "gRPC port (0 = any free port)")
    models: str = _f(
        "models",
        "a bundle, or a directory of bundles and of <name>/<version>/ bundles with an "
        "optional <name>/serving.yaml (README: Several bundles and versions)",
    )
    devices: str = _f(
        "auto", "auto | cpu | cuda:0,cuda:1,... (one worker per entry, per version served)"
    )
    cpu_threads: int = _f(
        0, "torch threads per CPU worker (0 = usable CPUs, the cgroup quota counted, / CPU workers)"
    )
    half_precision: bool = _f(True, "fp16 weights on CUDA workers (never on CPU)")
    cpu_precision: str = _f(
        "auto",
        "auto | fp32 | bf16 | int8: how CPU workers decode; auto = bf16 on CPUs with AMX, "
        "else fp32 (bench/README.md: speeds and scores)",
    )
    cpu_int8: bool = _f(False, "the older name of cpu_precision=int8")
    shortlist: bool = _f(
        True,
        "greedy and beam search over a per-batch vocabulary shortlist where a bundle has one "
        "(faster; scores in bench/README.md)",
    )
    max_batch_size: int = _f(64, "requests decoded together at most")
    max_queue_delay_ms: float = _f(5.0, "longest a request waits for its batch to fill")
    join_delay_ms: float = _f(
        20.0, "longest a request waits for companions to join a worker already decoding"
    )
    max_queue_size: int = _f(1024, "queued requests per task before RESOURCE_EXHAUSTED")
    max_pending_rpcs: int = _f(
        100_000,
        "calls gRPC may hold before hanseq reads them (a burst); past it gRPC cancels calls "
        "unseen (CANCELLED), so keep it above any burst: each costs a few KB",
    )
    retry_after_ms: int = _f(
        500, "with RESOURCE_EXHAUSTED, how long the caller is told to wait (gRPC retry pushback)"
    )
    max_input_chars: int = _f(2000, "longest input text, in characters")
    max_input_tokens: int = _f(
        512, "longest input, in the model's tokens (past the bundle's own limit it is cut)"
    )
    max_beam_size: int = _f(8, "largest beam_size a request may ask for")
    max_n_best: int = _f(8, "largest n_best a request may ask for")
    max_output_length: int = _f(256, "largest max_length (output tokens) a request may ask for")
    max_batch_items: int = _f(256, "texts in one GenerateBatch call at most")
    max_history_turns: int = _f(32, "turns of history in one Respond call at most")
    default_beam_size: int = _f(
        0, "beam_size of a request that sets none (0: the bundle's default for the task, else 1)"
    )
    grace_period_s: float = _f(10.0, "on SIGTERM, how long in-flight requests may finish")
    worker_start_timeout_s: float = _f(300.0, "how long a worker may take to load and warm up")
    max_message_bytes: int = _f(4 * 1024 * 1024, "largest gRPC message, in and out")
    keepalive_time_s: float = _f(30.0, "gRPC keepalive ping interval")
    max_connection_age_s: float = _f(
        0.0, "close client connections this old, so clients re-resolve and spread (0 = never)"
    )
    keepalive_timeout_s: float = _f(10.0, "gRPC keepalive ping timeout")
    reflection: bool = _f(True, "serve gRPC server reflection")
    redis_url: str = _f("", "shared cache, e.g. redis://host:6379/0 (empty = in-process only)")
    redis_password: str = _f("", "Redis password (else the URL's; from a Secret in Kubernetes)")
    cache_prefix: str = _f("hanseq:", "prefix of every Redis key")
    cache_ttl_s: float = _f(86400.0, "how long Redis keeps an answer")
    cache_entries: int = _f(10000, "answers kept in process at most (0 = no local layer)")
    cache_bytes: int = _f(64 * 1024 * 1024, "bytes of answers kept in process at most")
    redis_timeout_ms: float = _f(50.0, "Redis connect/read timeout; slower counts as down")
    cache_breaker_s: float = _f(5.0, "after a Redis failure, how long to skip it")
    metrics_port: int = _f(9464, "Prometheus /metrics port (0 = any free port, -1 = off)")
    auth_tokens_file: str = _f(
        "",
        "file of bearer tokens, one per line (# comments; admin:TOKEN for one that may also "
        "call admin RPCs); set: every call needs one",
    )
    auth_tokens: str = _f(
        "", "bearer tokens, comma-separated (prefer auth_tokens_file); admin:TOKEN may also reload"
    )
    admin_without_auth: bool = _f(
        False, "with no tokens configured, allow admin RPCs (ReloadModels) anyway: trusted nets"
    )
    tls_cert_file: str = _f("", "PEM certificate chain: serve TLS (with tls_key_file)")
    tls_key_file: str = _f("", "PEM private key of tls_cert_file")
    tls_client_ca_file: str = _f("", "PEM roots: require client certificates (mutual TLS)")
    caller_rate_per_s: float = _f(
        0.0, "requests per second per caller (token, else address); 0 = no rate limit"
    )
    caller_burst: int = _f(0, "requests a caller may send at once above its rate (0 = 2 s worth)")
    caller_concurrency: int = _f(256, "requests one caller may have in flight (0 = no limit)")
    log_level: str = _f("INFO", "DEBUG | INFO | WARNING | ERROR")
    otlp_endpoint: str = _f(
        "",
        "OpenTelemetry collector (OTLP/gRPC), e.g. http://otel-collector:4317; empty = no tracing",
    )
    trace_sample_ratio: float = _f(
        1.0, "share of traces recorded (0-1) where the caller's trace context does not decide"
    )
    log_format: str = _f(
        "auto", "text | json (one object per line) | auto: text on a terminal, else json"
    )

    def models_path(self) -> Path:
        """``models`` as given; the shipped models/ when left at the default elsewhere."""
        path = Path(self.models)
        if not path.exists() and self.models == "models":
            return REPO_MODELS
        return path

    def device_list(self) -> list[str]:
        if self.devices == "auto":
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return [f"cuda:{i}" for i in range(count)] or ["cpu"]
        return [d.strip() for d in self.devices.split(",") if d.strip()]


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def env_name(name: str) -> str:
    return "HANSEQ_" + name.upper()


def _convert(name: str, value: Any, source: str) -> Any:
    kind: Any = type(FIELDS[name].default)
    try:
        if kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{source}: {value!r} is not a valid {kind.__name__} for {name}"
        ) from None


def load_settings(
    overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    config = env.get("HANSEQ_CONFIG")
    if config:
        values.update(_from_yaml(Path(config)))
    for name in FIELDS:
        if env_name(name) in env:
            values[name] = _convert(name, env[env_name(name)], env_name(name))
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    validate(settings)
    return settings


def _from_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigurationError(f"HANSEQ_CONFIG: {path} not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown setting {unknown[0]!r}; valid: {', '.join(FIELDS)}"
        )
    return {k: _convert(k, v, str(path)) for k, v in raw.items()}


def validate(s: Settings) -> None:
    positive = [
        "max_batch_size",
        "max_queue_size",
        "max_pending_rpcs",
        "retry_after_ms",
        "max_input_chars",
        "max_input_tokens",
        "max_beam_size",
        "max_n_best",
        "max_output_length",
        "max_batch_items",
        "max_message_bytes",
    ]
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigurationError(f"{name} ({env_name(name)}) must be > 0")
    if not 0 <= s.port <= 65535:
        raise ConfigurationError(f"port ({env_name('port')}) must be in 0..65535")
    if s.max_queue_delay_ms < 0 or s.join_delay_ms < 0 or s.grace_period_s < 0:
        raise ConfigurationError(
            "max_queue_delay_ms, join_delay_ms and grace_period_s must be >= 0"
        )
    if not 0 <= s.default_beam_size <= s.max_beam_size:
        raise ConfigurationError("default_beam_size must be in 0..max_beam_size")
    if s.caller_rate_per_s < 0 or s.caller_burst < 0 or s.caller_concurrency < 0:
        raise ConfigurationError(
            "caller_rate_per_s, caller_burst and caller_concurrency must be >= 0"
        )
    if not 0 <= s.trace_sample_ratio <= 1:
        raise ConfigurationError(
            f"trace_sample_ratio ({env_name('trace_sample_ratio')}) must be in 0..1"
        )
    if s.cpu_precision not in ("auto", "fp32", "bf16", "int8"):
        raise ConfigurationError(
            f"cpu_precision ({env_name('cpu_precision')}) must be auto, fp32, bf16 or int8 "
            f"(got {s.cpu_precision!r})"
        )
    if s.cpu_int8 and s.cpu_precision not in ("auto", "int8"):
        raise ConfigurationError(
            f"cpu_int8 asks for int8 but cpu_precision is {s.cpu_precision}: set one of them"
        )
    if s.log_format not in ("auto", "text", "json"):
        raise ConfigurationError(
            f"log_format ({env_name('log_format')}) must be auto, text or json"
        )
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigurationError("tls_cert_file and tls_key_file go together (HANSEQ_TLS_*)")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise ConfigurationError("tls_client_ca_file needs tls_cert_file and tls_key_file")
    for name in ("auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigurationError(f"{name} ({env_name(name)}): {path} is not a file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting; the help names its env var and default."""
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env_name(name)}; default {f.default})"
        parser.add_argument(
            flag, dest=name, default=None, metavar=type(f.default).__name__.upper(), help=help_text
        )


def from_arguments(args: argparse.Namespace) -> Settings:
    return load_settings({name: getattr(args, name, None) for name in FIELDS})
