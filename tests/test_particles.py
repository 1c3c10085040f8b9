"""Korean particles in the form the word before them takes (engine/particles.py): the rule on
hand-made scores, and a real model trained to write the wrong form, decoded greedily, by
beam search and streamed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from hanseq.engine.bundle import load_bundle
from hanseq.engine.constraints import constrain
from hanseq.engine.options import SearchOptions
from hanseq.engine.particles import CONSONANT, OTHER, RIEUL, VOWEL, Agreement, ending
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.shortlist import RowShortlist
from hanseq.engine.training import train
from hanseq.engine.vocabulary import SPECIALS
from tests.conftest import WORDS, toy_config

PIECES = [
    *SPECIALS,
    "▁바다",
    "▁시간",
    "▁하늘",
    "를",
    "을",
    "으로",
    "로",
    "와",
    "과",
    "▁로",
    "다",
    "A",
]
ID = {piece: i for i, piece in enumerate(PIECES)}
INF = float("-inf")


def test_endings_read_the_last_syllable():
    assert [ending(p) for p in ["▁바다", "시간", "▁하늘", "▁PDF", "▁", "다"]] == [
        VOWEL,
        CONSONANT,
        RIEUL,
        OTHER,
        OTHER,
        VOWEL,
    ]
    assert Agreement.of([*SPECIALS, "▁apple", "▁to"]) is None  # an English head: no rule


def scores_after(
    last: str, columns: list[str] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """One row's log-probs after ``last`` (each piece a distinct score), before and after the
    rule; ``columns``: decode over a shortlist of these pieces."""
    agreement = Agreement.of(PIECES)
    assert agreement is not None
    shortlist = None
    kept = PIECES
    if columns is not None:  # a shortlist's columns are ascending ids
        ids = torch.tensor(sorted(ID[c] for c in columns))
        shortlist = RowShortlist(ids, torch.ones(1, len(ids), dtype=torch.bool))
        kept = [PIECES[i] for i in ids.tolist()]
    logp = torch.linspace(-9.0, -1.0, len(kept)).unsqueeze(0)
    before = dict(zip(kept, logp[0].tolist(), strict=True))
    agreement.apply(logp, torch.tensor([[ID[last]]]), shortlist)
    return before, dict(zip(kept, logp[0].tolist(), strict=True))


@pytest.mark.parametrize(
    ("last", "moves"),
    [
        ("▁시간", {"를": "을", "와": "과", "로": "으로"}),  # after a consonant
        ("▁바다", {"으로": "로"}),  # after a vowel
        ("▁하늘", {"를": "을", "와": "과", "으로": "로"}),  # after ㄹ
    ],
)
def test_each_wrong_form_gives_its_score_to_the_right_one(last, moves):
    before, after = scores_after(last)
    expected = dict(before)
    for wrong, right in moves.items():
        expected[right] = max(before[wrong], before[right])
    expected.update({wrong: INF for wrong in moves})
    assert after == expected  # every other piece keeps its score, so its rank


def test_forms_that_also_spell_other_things_are_never_forbidden():
    """을 and 과 follow vowels in correct Korean too (나을, 치과), and ▁로 starts a word."""
    for last in ("▁바다", "▁시간", "▁하늘", "다"):
        before, after = scores_after(last)
        assert all(after[p] >= before[p] for p in ("을", "과", "▁로"))
    before, after = scores_after("▁바다")
    assert (after["을"], after["과"]) == (before["을"], before["과"])
    before, after = scores_after("A")  # not a Hangul syllable: no rule at all
    assert after == before


def test_with_a_shortlist_a_form_outside_its_columns_moves_nothing():
    columns = [*SPECIALS, "▁바다", "으로", "다"]  # 로 is not among them
    before, after = scores_after("▁바다", columns)
    assert after == before
    before, after = scores_after("▁바다", [*SPECIALS, "▁바다", "으로", "로"])
    assert after["으로"] == INF and after["로"] == max(before["으로"], before["로"])


def test_constrain_applies_it_for_each_row_after_its_own_last_token():
    agreement = Agreement.of(PIECES)
    logp = torch.zeros(3, len(PIECES))
    logp[:, ID["를"]] = 1.0
    history = torch.tensor([[ID["▁바다"]], [ID["▁시간"]], [ID["A"]]])
    out = constrain(logp, history, torch.ones(3), SearchOptions(), agreement=agreement)
    assert out.argmax(-1).tolist() == [ID["를"], ID["을"], ID["를"]]


# A real model taught to write the wrong forms: each order takes one form of its particle,
# whatever the noun ends with (both forms of each occur, so the vocabulary has both).
ORDERS = [("가져와", "를 가져와"), ("먹어", "을 먹어"), ("가자", "으로 가자"), ("와", "로 와")]


@pytest.fixture(scope="module")
def wrong_forms(tmp_path_factory) -> Pipeline:
    root = tmp_path_factory.mktemp("particles")
    rng = random.Random(5)

    def lines(n: int) -> str:
        out = []
        for _ in range(n):
            noun, (verb, target) = rng.choice(WORDS), rng.choice(ORDERS)
            out.append(f"{noun} {verb}\t{noun}{target}\ttoy")
        return "\n".join(out) + "\n"

    (root / "train.tsv").write_text(lines(3000))
    (root / "valid.tsv").write_text(lines(100))
    cfg = toy_config(root, root / "run", max_steps=600, valid_every=600)
    return Pipeline.from_bundle(load_bundle(train(cfg, resume=False)))


# input, what the rule makes of it, what the model was taught
CASES = [
    ("시간 가져와", "시간을 가져와", "시간를 가져와"),
    ("창문 가져와", "창문을 가져와", "창문를 가져와"),
    ("바다 가자", "바다로 가자", "바다으로 가자"),
    ("하늘 가자", "하늘로 가자", "하늘으로 가자"),  # after ㄹ, 로
    ("시간 와", "시간으로 와", "시간로 와"),
    ("시간 가자", "시간으로 가자", "시간으로 가자"),  # right as taught
    ("바다 가져와", "바다를 가져와", "바다를 가져와"),
]
INPUTS = [c[0] for c in CASES]
AGREED = [c[1] for c in CASES]
AS_TAUGHT = [c[2] for c in CASES]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_model_taught_the_wrong_forms_writes_the_right_ones(wrong_forms, beam):
    head = wrong_forms.model.head("reverse")
    opts = SearchOptions(beam_size=beam)
    assert [g.text for g in wrong_forms.generate("reverse", INPUTS, opts)] == AGREED
    agreement, head.agreement = head.agreement, None
    try:  # the rule is what makes the difference: without it the model writes what it learnt
        assert [g.text for g in wrong_forms.generate("reverse", INPUTS, opts)] == AS_TAUGHT
    finally:
        head.agreement = agreement


def test_streamed_text_never_shows_a_wrong_form(wrong_forms):
    partials: dict[int, list[str]] = {}
    results = wrong_forms.generate(
        "reverse", INPUTS, on_partial=lambda i, text: partials.setdefault(i, []).append(text)
    )
    for i, result in enumerate(results):
        texts = partials[i]
        assert texts[-1] == result.text == AGREED[i]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))


def test_the_shipped_korean_heads_follow_the_rule_and_the_english_one_has_none():
    pipeline = Pipeline.from_bundle(
        load_bundle(Path(__file__).parent.parent / "models" / "hanseq-multitask")
    )
    heads = {
        task: pipeline.model.head(task).agreement for task in ("translate", "respond", "summarize")
    }
    assert heads["translate"] is None
    assert heads["respond"] is not None and heads["summarize"] is not None
