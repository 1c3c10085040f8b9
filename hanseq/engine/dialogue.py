"""A conversation -> one source text for the ``respond`` head, with speaker marks.

A bundle trained with ``tasks.respond.context_turns: N`` reads the last N turns before the
message. Each turn is prefixed by the mark of who said it, and the message by the user's mark;
the marks are tokens of the source vocabulary (``Side.tokenize`` keeps them whole), so the
encoder sees who said what instead of one run-on sentence::

    >>> source_text([Turn("노래 틀어줘", True), Turn("재생합니다.", False)], "누가 불렀어?", 4)
    '<user> 노래 틀어줘 <service> 재생합니다. <user> 누가 불렀어?'

With no history (or ``context_turns`` 0) the source is the message alone, exactly what the
single-turn pairs train on, so single-turn requests read as before.

Torch-free: the server process formats requests with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

USER_MARK = "<user>"
SERVICE_MARK = "<service>"
MARKS = (USER_MARK, SERVICE_MARK)
MARK_PATTERN = re.compile("(" + "|".join(re.escape(m) for m in MARKS) + ")")


@dataclass(frozen=True)
class Turn:
    text: str
    from_user: bool  # False: said by this service


def source_text(history: Sequence[Turn], message: str, context_turns: int) -> str:
    """The last ``context_turns`` turns of ``history`` (oldest first) and the message."""
    used = list(history[-context_turns:]) if context_turns > 0 else []
    if not used:
        return message
    parts = [f"{_mark(t.from_user)} {_unmarked(t.text)}" for t in used]
    return " ".join([*parts, f"{USER_MARK} {_unmarked(message)}"])


def split_marks(text: str) -> list[str]:
    """Text -> alternating plain segments and marks (empty segments dropped)."""
    return [part for part in MARK_PATTERN.split(text) if part.strip()]


def _mark(from_user: bool) -> str:
    return USER_MARK if from_user else SERVICE_MARK


def _unmarked(text: str) -> str:
    """A caller's text never smuggles in a speaker mark: a literal mark becomes a space."""
    return MARK_PATTERN.sub(" ", text)


class ContextError(ValueError):
    """A dialogue context file is missing or malformed; the message names file and line."""


def read_histories(path: Path) -> dict[tuple[str, str], list[Turn]]:
    """``*.context.jsonl`` -> (message, reply) -> the turns before the message."""
    if not path.is_file():
        raise ContextError(f"dialogue context file not found: {path}")
    out: dict[tuple[str, str], list[Turn]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                turns = [Turn(str(t["text"]), bool(t["from_user"])) for t in row["history"]]
                out[(str(row["message"]).strip(), str(row["reply"]).strip())] = turns
            except (ValueError, KeyError, TypeError) as e:
                raise ContextError(f"{path}:{number}: not a dialogue context line ({e})") from None
    return out
