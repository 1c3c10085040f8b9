"""Korean tokenization: real Mecab, lossless round trip."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hanseq.engine import korean
from tests.conftest import real_corpora

# Hangul syllables and jamo, Latin, digits, punctuation, emoji, CJK, odd whitespace, controls.
FRAGMENTS = st.one_of(
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),
    st.characters(min_codepoint=0x3131, max_codepoint=0x318E),
    st.sampled_from(list("abcXYZ0123456789.,!?()[]'\"-_/@#%&*:;~")),
    st.sampled_from(["😀", "👍🏽", "🇰🇷", "世界", "漢", "é", "e\u0301", "ß"]),
    st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2009", "\u200b"]),
    st.sampled_from(["\x00", "\x01", "\u2581", "\ufeff"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=40).map("".join))
def test_round_trip_on_generated_strings(text):
    assert korean.detokenize(korean.tokenize(text)) == korean.normalize(text)


def test_round_trip_on_real_corpus_lines():
    root = real_corpora()
    checked = 0
    for name in ["translate-koen", "dialogue-ko", "summarize-ko"]:
        with (root / name / "valid.tsv").open(encoding="utf-8") as f:
            for line in itertools.islice(f, 1500):
                for side in line.rstrip("\n").split("\t")[:2]:
                    assert korean.detokenize(korean.tokenize(side)) == korean.normalize(side)
                    checked += 1
    assert checked > 3000


def test_marks_word_starts_and_splits_morphemes():
    assert korean.tokenize("학교에 갑니다") == ["▁학교", "에", "▁갑니다"]
    assert korean.strip_marks(["▁학교", "에"]) == ["학교", "에"]


def test_normalize_is_nfc_and_collapses_whitespace():
    decomposed = "\u1112\u1161\u11ab"  # 한 as conjoining jamo
    assert korean.normalize(f"  {decomposed}\t\n국어\u3000 ") == "한 국어"


def test_characters_mecab_skips_are_kept():
    # Mecab stops at NUL (C strings); everything after it must still come back.
    assert korean.detokenize(korean.tokenize("가\x00나 다")) == "가\x00나 다"


def test_empty_and_blank():
    assert korean.tokenize("") == []
    assert korean.tokenize(" \t\n") == []


def test_morphemes_match_konlpy_morphs():
    tagger = korean._mecab()
    for text in [
        "아버지가 방에 들어가신다.",
        "파일을 저장하려면 Ctrl+S 키를 누르세요.",
        "😀 a1 ,.!",
    ]:
        assert korean.morphemes(text) == tagger.morphs(text)
