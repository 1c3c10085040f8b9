"""Korean particles in the form the word before them takes: 문서로, not 문서으로.

Several Korean particles have two forms, and which one is right depends on how the word before
ends: after a vowel 를 / 로 / 와, after a consonant 을 / 으로 / 과 (after ㄹ, 로). A head
whose targets are Mecab morphemes emits the particle as a piece of its own, after the noun,
and the shipped summarize head got the form wrong 20 times in 19 of its 747 valid summaries (조건를,
문서으로, 공간로, 조건와); the reply head wrote 를를. The two forms are one particle, so at every
decoding step, like the other constraints (engine/constraints.py), the form that cannot follow
the piece just emitted gives its score to the form that can (where that is higher) and is
forbidden: where the model would have written the wrong form it writes the right one with the
same score, and every other choice keeps its rank. Nothing streamed changes afterwards.

Two other ways were tried on the valid splits of the shipped bundle. Forbidding the wrong form
alone let the model's next choice win, which changed what the summaries said rather than their
spelling (조건를 삽입하려면 became 조건 삽입). Giving the right form the probability of both
changed 34 summaries and 10 replies, 15 and 8 of them with nothing wrong (수식의 셀의 became
수식을 사용하여).
This way changed the 19 summaries and 2 replies that had a wrong form, and in them the form
(and in a few, what the model wrote after it).

Only forms that nothing else is spelled with are moved. In the training targets of respond and
summarize, cut into the heads' pieces, ~3,900 of these four particles follow a Hangul syllable;
를 after a consonant occurs there 2 times, 으로 after a vowel or ㄹ never, 와 after a consonant
2 times and 로 after a consonant other than ㄹ 7 times, each a typo or a name (세종로). 을, 은
and 과 are never moved: they follow vowels in correct Korean too (나을, 나은: irregular verbs;
치과, 부과: BPE pieces of one noun), 16, 51 and 10 times in the same data. A rule applies to a
piece that continues a word (no word-start mark) after a piece whose last character is a
Hangul syllable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hanseq.engine.korean import WORD_START
from hanseq.engine.shortlist import RowShortlist
from hanseq.engine.utf8 import NEG_INF

OTHER, VOWEL, RIEUL, CONSONANT = 0, 1, 2, 3  # how a piece ends; OTHER: not a Hangul syllable
_RIEUL_FINAL = 8  # ㄹ's index among the 28 finals of a precomposed syllable (0: none)

# particle piece -> (the endings it cannot follow, the form that takes its place there)
RULES: dict[str, tuple[tuple[int, ...], str]] = {
    "를": ((CONSONANT, RIEUL), "을"),
    "으로": ((VOWEL, RIEUL), "로"),
    "와": ((CONSONANT, RIEUL), "과"),
    "로": ((CONSONANT,), "으로"),
}


def ending(piece: str) -> int:
    """How a piece's last character ends: VOWEL, RIEUL, CONSONANT, or OTHER."""
    text = piece.lstrip(WORD_START)
    if not text or not 0xAC00 <= ord(text[-1]) <= 0xD7A3:
        return OTHER
    final = (ord(text[-1]) - 0xAC00) % 28
    return VOWEL if final == 0 else RIEUL if final == _RIEUL_FINAL else CONSONANT


@dataclass(frozen=True)
class Agreement:
    """A head's particle rules as tensors: each target id's ending, the ruled particle ids,
    the form that takes each one's place, and after which endings it does."""

    endings: Tensor  # vocab: OTHER / VOWEL / RIEUL / CONSONANT per target id
    ids: Tensor  # K: the ruled particle pieces' ids
    partners: Tensor  # K: the id of the form that takes each one's place
    moved: Tensor  # 4 x K bool: moved[e, k] = after a piece ending in e, ids[k] gives way

    @classmethod
    def of(cls, pieces: Sequence[str]) -> Agreement | None:
        """None when the vocabulary has no ruled particle with its other form (an English
        head)."""
        index = {piece: i for i, piece in enumerate(pieces)}
        ruled = [p for p, (_, other) in RULES.items() if p in index and other in index]
        if not ruled:
            return None
        moved = torch.zeros(4, len(ruled), dtype=torch.bool)
        for k, piece in enumerate(ruled):
            moved[list(RULES[piece][0]), k] = True
        return cls(
            torch.tensor([ending(p) for p in pieces], dtype=torch.long),
            torch.tensor([index[p] for p in ruled], dtype=torch.long),
            torch.tensor([index[RULES[p][1]] for p in ruled], dtype=torch.long),
            moved,
        )

    def to(self, device: torch.device) -> Agreement:
        return Agreement(
            *(t.to(device) for t in (self.endings, self.ids, self.partners, self.moved))
        )

    def apply(self, logp: Tensor, history: Tensor, shortlist: RowShortlist | None = None) -> None:
        """Rows x columns log-probs, in place: where a row's last token (``history``: rows x
        t ids) calls for the other form of a particle, that form gets the higher score of the
        two and the wrong one none. With a ``shortlist`` the columns are its columns; a rule
        applies only where both its forms are among them."""
        if history.size(1) == 0:
            return
        ids, partners = self.ids, self.partners
        moved = self.moved[self.endings[history[:, -1]]]  # rows x K
        if shortlist is not None:
            ids, partners = shortlist.positions(ids), shortlist.positions(partners)
            columns = shortlist.columns
            both = (columns[ids] == self.ids) & (columns[partners] == self.partners)
            ids, partners, moved = ids[both], partners[both], moved[:, both]
        if not bool(moved.any()):
            return
        # 로 and 으로 are each other's partners: read both before writing either, and write
        # only the moved places (the other places keep what the first write left there).
        best = torch.maximum(logp[:, ids], logp[:, partners])
        logp[:, ids] = logp[:, ids].masked_fill(moved, NEG_INF)
        logp[:, partners] = torch.where(moved, best, logp[:, partners])
