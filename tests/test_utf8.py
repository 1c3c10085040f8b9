"""Byte-fallback pieces kept to whole UTF-8 characters: the kinds of bytes, what a row owes,
the mask a step gets, and the shipped bundle's summary that used to show U+FFFD."""

from __future__ import annotations

import torch

from hanseq.engine.utf8 import CONTINUATION, NEVER, OTHER, byte_kinds, keep_whole, owed
from hanseq.engine.vocabulary import EOS_ID, PAD_ID, SPECIALS

# ids: the four specials, then a word piece, ASCII, a continuation, 2/3/4-byte leads, 0xC0
PIECES = [*SPECIALS, "▁사과", "<0x41>", "<0xA1>", "<0xC3>", "<0xEC>", "<0xF0>", "<0xC0>"]
WORD, ASCII, CONT, LEAD2, LEAD3, LEAD4, BAD = range(4, 11)


def test_every_byte_piece_gets_its_kind():
    kinds = byte_kinds(PIECES)
    assert kinds is not None
    assert kinds.tolist() == [OTHER] * 6 + [CONTINUATION, 2, 3, 4, NEVER]
    assert byte_kinds([*SPECIALS, "▁사과", "바다"]) is None  # nothing to constrain


def test_what_a_row_still_owes():
    kinds = byte_kinds(PIECES)
    assert kinds is not None
    rows = [
        [PAD_ID, PAD_ID, WORD],  # 0: a whole word
        [PAD_ID, WORD, LEAD3],  # 2: a 3-byte lead alone
        [WORD, LEAD3, CONT],  # 1
        [LEAD3, CONT, CONT],  # 0: complete
        [LEAD4, CONT, CONT],  # 1
        [PAD_ID, PAD_ID, LEAD2],  # 1
        [PAD_ID, LEAD2, CONT],  # 0
    ]
    assert owed(torch.tensor(rows), kinds).tolist() == [0, 2, 1, 0, 1, 1, 0]
    assert owed(torch.tensor([[LEAD3], [WORD]]), kinds).tolist() == [2, 0]  # short histories
    assert owed(torch.empty(2, 0, dtype=torch.long), kinds).tolist() == [0, 0]


def test_a_step_keeps_characters_whole():
    kinds = byte_kinds(PIECES)
    assert kinds is not None
    history = torch.tensor([[PAD_ID, WORD], [WORD, LEAD3]])
    logp = torch.zeros(2, len(PIECES))
    keep_whole(logp, history, kinds, None)
    allowed = torch.isfinite(logp)
    # not owing: anything but a stray continuation byte or an impossible byte
    assert not allowed[0, CONT] and not allowed[0, BAD] and allowed[0, [EOS_ID, WORD, LEAD3]].all()
    # owing: only a continuation byte (not even the end)
    assert allowed[1].tolist() == [i == CONT for i in range(len(PIECES))]
    # with a shortlist lacking continuation bytes, a row that owes may only end
    columns = torch.tensor([0, 1, 2, 3, WORD, LEAD3])
    logp = torch.zeros(2, len(columns))
    keep_whole(logp, history, kinds, columns)
    assert torch.isfinite(logp[1]).tolist() == [c == EOS_ID for c in columns.tolist()]


def test_no_row_starts_a_character_its_own_columns_cannot_finish():
    kinds = byte_kinds(PIECES)
    assert kinds is not None
    history = torch.tensor([[PAD_ID, WORD], [PAD_ID, WORD]])
    columns = torch.tensor([0, 1, 2, 3, WORD, CONT, LEAD3])
    logp = torch.zeros(2, len(columns))
    logp[0, 5] = float("-inf")  # row 0's shortlist lacks the continuation byte; row 1's has it
    keep_whole(logp, history, kinds, columns)
    allowed = torch.isfinite(logp)
    assert not allowed[0, 6] and allowed[0, [EOS_ID, 4]].all()
    assert allowed[1, 6] and not allowed[1, 5]  # a lead byte, yet no stray continuation
    no_continuation = torch.tensor([0, 1, 2, 3, WORD, LEAD3])  # none in the batch's columns
    logp = torch.zeros(2, len(no_continuation))
    keep_whole(logp, history, kinds, no_continuation)
    assert not torch.isfinite(logp[:, 5]).any()


def test_a_shipped_reply_with_history_keeps_its_characters_whole():
    """The reply to this conversation ended on a lead byte its shortlist row could not finish."""
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.dialogue import Turn, source_text
    from hanseq.engine.options import SearchOptions
    from hanseq.engine.pipeline import Pipeline
    from tests.conftest import REPO

    bundle = load_bundle(REPO / "models" / "hanseq-multitask")
    pipeline = Pipeline.from_bundle(bundle)
    history = [
        Turn("비 오는 날 듣기 좋은 노래 추천해줘", True),
        Turn("비 오는 날에는 에픽하이의 우산을 추천해요.", False),
    ]
    source = source_text(history, "고마워!", bundle.manifest["tasks"]["respond"]["context_turns"])
    output = pipeline.generate("respond", [source], SearchOptions(**bundle.decoding("respond")))
    assert output[0].text and "\ufffd" not in output[0].text


def test_the_shipped_summary_no_longer_shows_a_broken_character():
    from hanseq.engine.bundle import load_bundle
    from hanseq.engine.options import SearchOptions
    from hanseq.engine.pipeline import Pipeline
    from tests.conftest import REPO

    bundle = load_bundle(REPO / "models" / "hanseq-multitask")
    pipeline = Pipeline.from_bundle(bundle)
    text = (
        "회의는 다음 주 화요일 오전 10시로 미뤄졌습니다. "
        "참석자는 발표 자료를 월요일까지 보내 주시기 바랍니다."
    )
    for opts in (SearchOptions(**bundle.decoding("summarize")), SearchOptions()):
        output = pipeline.generate("summarize", [text], opts)[0].text
        assert output and "\ufffd" not in output
