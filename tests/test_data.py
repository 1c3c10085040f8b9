"""Data: malformed lines are skipped and counted (or refused in strict mode)."""

from __future__ import annotations

from collections import Counter

import pytest

from hanseq.engine.bundle import Side
from hanseq.engine.config import TokenizerConfig
from hanseq.engine.data import BatchStream, DataError, Encoded, encode, read_tsv
from hanseq.engine.tokenizers import build_tokenizer
from hanseq.engine.vocabulary import BOS_ID, EOS_ID, PAD_ID

LINES = [
    "사과가 좋아요\tI like apples\tshop".encode(),
    b"only one column",
    b"a\tb\tc\td",
    b"\tempty source",
    b"\xff\xfe broken\tutf8",
    "바다\t\tsea".encode(),
    "하늘이 맑다\tThe sky is clear".encode(),
]


@pytest.fixture
def messy(tmp_path):
    path = tmp_path / "messy.tsv"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    return path


def test_malformed_lines_are_skipped_counted_and_located(messy):
    examples, report = read_tsv(messy)
    assert [(e.source, e.origin) for e in examples] == [
        ("사과가 좋아요", "shop"),
        ("하늘이 맑다", "default"),
    ]
    assert report.skipped == 5 and report.read == 2
    assert report.locations == [
        f"{messy}:2: expected 2 or 3 tab-separated columns, found 1",
        f"{messy}:3: expected 2 or 3 tab-separated columns, found 4",
        f"{messy}:4: empty source",
        f"{messy}:5: invalid UTF-8",
        f"{messy}:6: empty target",
    ]
    assert "skipped 5 malformed line(s) of 7" in report.summary()


def test_strict_mode_stops_at_the_first_bad_line(messy):
    with pytest.raises(DataError, match=r"messy.tsv:2: expected 2 or 3"):
        read_tsv(messy, strict=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_tsv(tmp_path / "nope.tsv")


def side(texts):
    tok = build_tokenizer(TokenizerConfig(kind="mecab"))
    return Side(tok, tok.fit(texts))


def test_long_pairs_are_truncated_and_counted(messy):
    examples, _ = read_tsv(messy)
    src, tgt = side([e.source for e in examples]), side([e.target for e in examples])
    enc = encode(examples, src, tgt, max_src=3, max_tgt=10)
    assert enc.truncated == 2  # both have 4 morphemes; 3 ids hold 2 + EOS
    assert all(len(s) <= 3 and s[-1] == EOS_ID for s in enc.sources)


def test_batches_follow_origin_weights_and_resume_exactly():
    # origin "a": sources of length 2; origin "b": length 3 (so batches show the origin)
    enc = Encoded(
        [[5, EOS_ID]] * 50 + [[6, 7, EOS_ID]] * 50, [[5, EOS_ID]] * 100, ["a"] * 50 + ["b"] * 50
    )
    stream = BatchStream(enc, batch_size=8, origin_weights={"a": 9.0, "b": 1.0}, seed=3)
    drawn = Counter()
    for _ in range(60):
        batch = next(stream)
        drawn["a"] += int((batch.src_len == 2).sum())
        drawn["b"] += int((batch.src_len == 3).sum())
    assert 0.85 < drawn["a"] / (drawn["a"] + drawn["b"]) < 0.95
    saved = stream.state()
    expected = [next(stream).src for _ in range(5)]
    resumed = BatchStream(enc, 8, {"a": 9.0, "b": 1.0}, seed=3)
    resumed.restore(saved)
    assert all(bool((next(resumed).src == e).all()) for e in expected)
    assert batch.tgt_in[0, 0] == BOS_ID and batch.tgt_out[0, -1] in (EOS_ID, PAD_ID)
