"""Every message that crosses the pipe between the server and a worker process, typed.

The server sends a ``DecodeBatch`` (rows of one task and one set of options), a ``Cancel`` or
``Stop``; the worker answers ``Ready`` (or ``Fatal``) once, ``Partial`` text for streaming rows,
and exactly one ``Done`` per row it was given, carrying exactly one of a ``Generation``,
``Refused``, ``Failed`` or ``Cancelled`` (Triton's ``execute``: one response per request).
A row has one identity, ``Row.id``, from the server, on the pipe and in the worker's scheduler.

Torch-free: the server process imports this (engine.options is torch-free too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hanseq.engine.options import BatchKey, Generation


@dataclass(frozen=True)
class TaskInfo:
    """What the pool reports of a task it serves (from the bundle's manifest)."""

    model_id: str  # the bundle's id (bundle.json)
    model_version: str  # the served version: its directory's name in models/<name>/<version>/
    metric: str  # the task's validation metric
    valid_scores: dict[str, float] = field(default_factory=dict)
    context_turns: int = 0  # respond: turns of history the model reads (0: the message only)
    decoding: dict[str, float] = field(default_factory=dict)  # the bundle's default options
    max_target_length: int = 100
    max_source_length: int = 200  # longer inputs are cut to this many tokens
    model_name: str = ""  # the bundle name requests give (service/repository.py)
    bundle_version: str = ""  # the version its bundle.json records


# ---- server -> worker --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int  # unique among the rows a worker holds
    text: str
    stream: bool = False  # send Partial text as it grows


@dataclass(frozen=True)
class DecodeBatch:
    key: BatchKey
    rows: list[Row]


@dataclass(frozen=True)
class Cancel:
    """The row's caller is gone: answer it Cancelled if it has not started, else it leaves
    its batch at the next step with what it has."""

    row: int


@dataclass(frozen=True)
class Stop:
    pass


ToWorker = DecodeBatch | Cancel | Stop


# ---- worker -> server --------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    tasks: dict[str, TaskInfo]


@dataclass(frozen=True)
class Fatal:
    """The worker could not start (the message says why); it exits."""

    message: str


@dataclass(frozen=True)
class Partial:
    row: int
    text: str  # the output so far


@dataclass(frozen=True)
class Refused:
    """The input breaks a limit only the worker can check (its length in tokens)."""

    problem: str


@dataclass(frozen=True)
class Failed:
    """Decoding this row failed alone (its batch was split and retried first)."""

    message: str


@dataclass(frozen=True)
class Cancelled:
    """The caller left before the row started: it was never decoded."""


Answer = Generation | Refused | Failed | Cancelled


@dataclass(frozen=True)
class Done:
    row: int
    answer: Answer
    compute_ms: float = 0.0  # from the row's arrival in the worker to its answer
    batch_size: int = 1  # rows decoding together when it joined, itself included


FromWorker = Ready | Fatal | Partial | Done
