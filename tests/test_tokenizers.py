"""Tokenizers and vocabularies: learned pieces still detokenize exactly."""

from __future__ import annotations

from collections import Counter

import pytest

from hanseq.engine import korean
from hanseq.engine.config import ConfigurationError, TokenizerConfig
from hanseq.engine.tokenizers import build_tokenizer
from hanseq.engine.vocabulary import EOS_ID, UNK_ID, Vocabulary

KOREAN = [
    "오늘은 날씨가 정말 좋네요.",
    "회의는 내일 오후 세 시에 시작합니다.",
    "파일을 저장하려면 Ctrl+S 키를 누르세요.",
    "새 문서를 만들고 표를 삽입합니다.",
    "이 설정은 다음 실행부터 적용됩니다.",
] * 20
ENGLISH = [
    "The weather is really nice today.",
    "The meeting starts at three tomorrow.",
    "Press Ctrl+S to save the file.",
] * 20
UNSEEN = ["뷁똠 😀 ŝ 새로운 단어들", "완전히 처음 보는 문장입니다!"]


def test_mecab_with_bpe_round_trips_seen_and_unseen_text(tmp_path):
    tok = build_tokenizer(TokenizerConfig(kind="mecab", subword="bpe", vocab_size=400))
    vocab = tok.fit(KOREAN)
    for text in KOREAN[:5] + UNSEEN:
        pieces = tok.tokenize(text)
        assert tok.detokenize(pieces) == korean.normalize(text)
        assert UNK_ID not in vocab.encode(pieces)  # byte fallback: nothing is unknown
    tok.save(tmp_path, "src")
    again = build_tokenizer(tok.cfg)
    again.load(tmp_path, "src")
    assert again.tokenize(UNSEEN[1]) == tok.tokenize(UNSEEN[1])


def test_bpe_pieces_never_cross_a_morpheme():
    tok = build_tokenizer(TokenizerConfig(kind="mecab", subword="bpe", vocab_size=400))
    tok.fit(KOREAN)
    text = KOREAN[1]
    morphemes = korean.tokenize(text)
    pieces = tok.tokenize(text)
    assert len(pieces) >= len(morphemes)
    joined, position = "".join(pieces), 0
    for m in morphemes:  # every morpheme boundary is also a piece boundary
        position += len(m)
        assert any(len("".join(pieces[:i])) == position for i in range(len(pieces) + 1))
    assert joined == "".join(morphemes)


def test_sentencepiece_round_trips_english():
    tok = build_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=300))
    tok.fit(ENGLISH)
    for text in ENGLISH[:3] + ["Unseen words, like zebra & QUIZ 42!"]:
        assert tok.detokenize(tok.tokenize(text)) == text


def test_mecab_without_subwords_counts_morphemes():
    tok = build_tokenizer(TokenizerConfig(kind="mecab", min_freq=2))
    vocab = tok.fit(KOREAN[:5] * 2 + ["드문단어 하나"])
    assert "▁파일" in vocab.stoi
    assert vocab.encode(["▁드문단어"]) == [UNK_ID]


def test_sentencepiece_refuses_subword_option():
    with pytest.raises(ConfigurationError, match="subword"):
        build_tokenizer(TokenizerConfig(kind="sentencepiece", subword="bpe"))


def test_vocabulary_specials_order_and_file_round_trip(tmp_path):
    vocab = Vocabulary.from_counts(Counter({"가": 3, "나": 5, "다": 1}), min_freq=2)
    assert vocab.itos[4:] == ["나", "가"]
    assert vocab.decode([4, 5, EOS_ID, 4]) == ["나", "가"]
    vocab.save(tmp_path / "v.txt")
    assert Vocabulary.load(tmp_path / "v.txt").itos == vocab.itos
