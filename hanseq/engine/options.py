"""What a caller asks of a search (SearchOptions) and what it gets back: a Hypothesis (ids,
inside the engine) and a Generation (text, what leaves it).

Scores are summed log-probabilities (EOS included) divided by the GNMT length penalty
``((5 + length) / 6) ** alpha``; alpha 0 leaves them raw.

Torch-free at run time: the server process builds SearchOptions and reads Generations without
importing torch (only its workers load it), so Tensor is imported for type checking alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


class InvalidOptions(ValueError):
    """A decoding option is out of range; the message names it and its limit."""


@dataclass(frozen=True)
class SearchOptions:
    """Frozen, so hashable: inputs decode together only with equal options (a batch key)."""

    beam_size: int = 1
    n_best: int = 1
    max_length: int = 100  # generated tokens, EOS included
    min_length: int = 0  # EOS is forbidden before this many tokens
    length_penalty: float = 0.0  # alpha of the GNMT penalty; 0 = raw log-probability
    no_repeat_ngram: int = 0  # > 0: never repeat an n-gram of this size
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None  # sampling; every row of a batch uses its own generator
    return_attention: bool = False

    def validate(self) -> None:
        """Raise InvalidOptions naming the field and its limit."""
        checks = [
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (1 <= self.n_best <= self.beam_size, "n_best must be between 1 and beam_size"),
            (self.max_length >= 1, "max_length must be >= 1"),
            (0 <= self.min_length < self.max_length, "min_length must be in [0, max_length)"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.no_repeat_ngram >= 0, "no_repeat_ngram must be >= 0"),
            (not (self.sampling and self.beam_size > 1), "sampling needs beam_size 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOptions(message)


@dataclass(frozen=True)
class BatchKey:
    """Inputs decode together only with equal task and options: the one batching key, from
    the server's queues to the engine's scheduler."""

    task: str
    options: SearchOptions


# Options a bundle may set per task (manifest ``tasks.<task>.decoding``), applied wherever a
# request leaves them unset: the deterministic ones only, so a default reply stays cacheable.
DEFAULTABLE = ("beam_size", "length_penalty", "no_repeat_ngram")


def decoding_defaults(raw: object) -> dict[str, float | int]:
    """A manifest's ``decoding`` mapping, checked: known keys, numbers in range."""
    if not raw:
        return {}
    if not isinstance(raw, dict) or any(k not in DEFAULTABLE for k in raw):
        raise InvalidOptions(f"decoding defaults: only {', '.join(DEFAULTABLE)} may be set")
    out: dict[str, float | int] = {}
    for key, value in raw.items():
        kind = float if key == "length_penalty" else int
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidOptions(f"decoding defaults: {key} must be a number, got {value!r}")
        out[key] = kind(value)
    SearchOptions(**out).validate()  # type: ignore[arg-type]
    return out


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float
    attention: Tensor | None = None  # (len(tokens) + 1) x src_len, the EOS step included


@dataclass
class Generation:
    """One input's output as text: what the CLI prints and the service answers."""

    text: str
    score: float
    tokens: list[str] = field(default_factory=list)  # target tokens (pieces / morphemes)
    source_tokens: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # n-best after the 1st
    attention: list[list[float]] | None = None  # (len(tokens) + 1) x (len(source_tokens) + 1)
    truncated: bool = False  # the input was longer than max_source_length


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0
