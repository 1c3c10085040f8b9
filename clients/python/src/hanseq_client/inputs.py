"""Building request messages from Python values; shared by Client and AsyncClient.

Decoding options are keyword arguments named exactly as the proto's ``DecodingOptions`` fields.
A mistake the client can see (an unknown option, a wrong type, a negative count) raises
``InvalidInput`` naming the field before anything is sent; limits that depend on the server
(``max_beam_size`` ...) are the server's to check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from hanseq_client._proto import hanseq_pb2 as pb
from hanseq_client.errors import InvalidInput

OPTION_NAMES = tuple(f.name for f in pb.DecodingOptions.DESCRIPTOR.fields)


class DecodingOptions(TypedDict, total=False):
    """Every decoding option; an option left out takes the server's default."""

    beam_size: int  # 1 = greedy
    n_best: int  # alternatives returned, <= beam_size
    max_length: int  # output tokens
    min_length: int  # output tokens before the end may come
    length_penalty: float  # GNMT alpha; 0 = raw log-probability
    no_repeat_ngram: int  # never repeat an n-gram of this size (0 = off)
    sample: bool  # sample instead of greedy / beam
    temperature: float  # sampling only
    top_k: int  # sampling only; 0 = no top-k filter
    top_p: float  # sampling only; 1 = no nucleus filter
    seed: int  # sampling only; same seed + input = same output
    return_attention: bool  # return tokens and the attention matrix
    no_cache: bool  # bypass the server's result cache


@dataclass(frozen=True)
class Turn:
    """One earlier turn of a conversation, for ``respond(history=...)``."""

    text: str
    from_user: bool  # True: said by the user; False: by the service


def decoding_options(options: Mapping[str, Any]) -> pb.DecodingOptions:
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise InvalidInput(
            f"unknown decoding option {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}",
            code="INVALID_ARGUMENT",
        )
    message = pb.DecodingOptions()
    for name, value in options.items():
        if value is None:
            continue  # None = the server's default, as if left out
        try:
            setattr(message, name, value)
        except (TypeError, ValueError) as e:
            raise _invalid(f"options.{name}", f"{value!r} is not valid here ({e})") from None
    return message


def text_field(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(name, f"must be a str, not {type(value).__name__}")
    return value


def texts_field(name: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise _invalid(name, "must be a list of str, not one str")
    return [text_field(f"{name}[{i}]", v) for i, v in enumerate(values)]


def history_field(turns: Iterable[Turn | tuple[str, bool]]) -> list[pb.Turn]:
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, Turn):
            text, from_user = turn.text, turn.from_user
        elif isinstance(turn, tuple) and len(turn) == 2:
            text, from_user = turn
        else:
            raise _invalid(f"history[{i}]", "must be a Turn or a (text, from_user) pair")
        out.append(pb.Turn(text=text_field(f"history[{i}].text", text), from_user=bool(from_user)))
    return out


def _invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field}: {problem}", code="INVALID_ARGUMENT")
