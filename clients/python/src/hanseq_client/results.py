"""Typed results: what a call returns, as plain dataclasses (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.errors import HanseqError, from_item_error


@dataclass(frozen=True)
class Alternative:
    """One of the n-best after the first."""

    text: str
    score: float


@dataclass(frozen=True)
class Attention:
    """Which source token each output token looked at. ``weights[i][j]``: how much target
    token ``i`` attended to source token ``j``. Both token lists end with ``</s>``, so
    ``weights`` is ``len(target_tokens) x len(source_tokens)``."""

    source_tokens: list[str]
    target_tokens: list[str]
    weights: list[list[float]]


@dataclass(frozen=True)
class Timings:
    """Milliseconds. ``queue_ms``: waiting for a batch and a worker; ``compute_ms``: decoding
    (0 for a cached answer); ``total_ms``: the whole call as this client saw it."""

    queue_ms: float
    compute_ms: float
    total_ms: float
    batch_size: int  # requests decoded together with this one (itself included)


@dataclass(frozen=True)
class Result:
    text: str
    score: float  # log-probability / length penalty
    alternatives: list[Alternative]
    cached: bool
    model_id: str
    model_version: str
    truncated: bool  # the input was cut to the model's longest source
    timings: Timings
    attention: Attention | None = None  # with return_attention=True
    model_name: str = ""  # the bundle name that answered (what ``model=`` names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StreamUpdate:
    """One message of ``stream()``: the output so far (``text``, the whole prefix) and what it
    added since the previous message (``delta``); the last one has ``final=True`` and the
    complete ``result``."""

    text: str
    final: bool
    result: Result | None = None
    delta: str = ""


@dataclass(frozen=True)
class ModelInfo:
    task: str
    model_id: str
    model_version: str
    metric: str  # the task's validation metric
    valid_scores: dict[str, float] = field(default_factory=dict)
    context_turns: int = 0  # respond: turns of history the model reads (0: the message only)
    defaults: dict[str, float] = field(default_factory=dict)  # options an unset field takes
    max_source_tokens: int = 0  # longer inputs are cut to this many tokens (Result.truncated)
    model_name: str = ""  # the bundle name requests give as ``model=``
    bundle_version: str = ""  # the version its bundle.json records


@dataclass(frozen=True)
class ServedModel:
    """One served version of one bundle (``models().models``)."""

    name: str
    version: str
    tasks: list[ModelInfo]
    default_for: list[str]  # tasks it answers when a call names no model
    traffic_share: float  # its share (0-1) of the calls that name no version
    workers: int  # live worker processes holding it


@dataclass(frozen=True)
class Limits:
    max_input_chars: int
    max_beam_size: int
    max_n_best: int
    max_output_length: int
    max_batch_items: int
    max_history_turns: int


@dataclass(frozen=True)
class Models:
    """What ``models()`` returns: the tasks served and the limits in force."""

    tasks: list[ModelInfo]  # per task, the version answering calls that name no model
    limits: Limits
    models: list[ServedModel] = field(default_factory=list)  # every version served

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def items_from_pb(reply: pb.GenerateBatchResponse, total_ms: float) -> list[Result | HanseqError]:
    """Each input's result or its own error, in input order (a server older than ``items``
    sends ``results`` alone, and failed the whole call instead)."""
    if not reply.items:
        return [result_from_pb(r, total_ms) for r in reply.results]
    return [
        result_from_pb(i.result, total_ms) if i.HasField("result") else from_item_error(i.error)
        for i in reply.items
    ]


def first_failure(items: list[Result | HanseqError]) -> list[Result]:
    """``batch()``: the results, or the first input's error raised."""
    results = []
    for item in items:
        if isinstance(item, HanseqError):
            raise item
        results.append(item)
    return results


def result_from_pb(reply: pb.GenerateResponse, total_ms: float) -> Result:
    timings = Timings(reply.queue_ms, reply.compute_ms, total_ms, reply.batch_size)
    return Result(
        text=reply.text,
        score=reply.score,
        alternatives=[Alternative(a.text, a.score) for a in reply.alternatives],
        cached=reply.cached,
        model_id=reply.model_id,
        model_version=reply.model_version,
        truncated=reply.truncated,
        timings=timings,
        attention=_attention(reply),
        model_name=reply.model_name,
    )


def _attention(reply: pb.GenerateResponse) -> Attention | None:
    if not reply.HasField("attention"):
        return None
    rows, cols, flat = reply.attention.rows, reply.attention.cols, list(reply.attention.weights)
    weights = [flat[r * cols : (r + 1) * cols] for r in range(rows)]
    # The matrix has one more row and column than there are tokens: the end of each side.
    source = [*reply.source_tokens, *["</s>"] * (cols - len(reply.source_tokens))]
    target = [*reply.target_tokens, *["</s>"] * (rows - len(reply.target_tokens))]
    return Attention(source_tokens=source, target_tokens=target, weights=weights)


def update_from_pb(reply: pb.GenerateStreamResponse, total_ms: float) -> StreamUpdate:
    result = result_from_pb(reply.result, total_ms) if reply.final else None
    return StreamUpdate(text=reply.text, final=reply.final, result=result, delta=reply.delta)


def task_from_pb(info: pb.TaskInfo) -> ModelInfo:
    scores = dict(sorted(info.valid_scores.items()))
    defaults = {f.name: v for f, v in info.defaults.ListFields()}
    return ModelInfo(
        info.task,
        info.model_id,
        info.model_version,
        info.metric,
        scores,
        info.context_turns,
        defaults,
        info.max_source_tokens,
        info.model_name,
        info.bundle_version,
    )


def served_from_pb(info: pb.ModelInfo) -> ServedModel:
    return ServedModel(
        info.name,
        info.version,
        [task_from_pb(t) for t in info.tasks],
        list(info.default_for),
        round(info.traffic_share, 4),
        info.workers,
    )


def models_from_pb(reply: pb.ListModelsResponse) -> Models:
    lim = reply.limits
    limits = Limits(
        lim.max_input_chars,
        lim.max_beam_size,
        lim.max_n_best,
        lim.max_output_length,
        lim.max_batch_items,
        lim.max_history_turns,
    )
    served = [served_from_pb(m) for m in reply.models]
    return Models([task_from_pb(t) for t in reply.tasks], limits, served)
