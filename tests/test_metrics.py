"""Metrics: hand-checked values."""

from __future__ import annotations

import pytest

from hanseq.engine import metrics


def test_lcs_and_rouge_l():
    assert metrics.lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert metrics.rouge_l(["a", "b", "c"], ["a", "c"]) == pytest.approx(0.8)


def test_rouge_n_counts_clipped_overlap():
    assert metrics.rouge_n(["a", "a", "b"], ["a", "b"], 1) == pytest.approx(0.8)
    assert metrics.rouge_n(["a", "b"], ["b", "a"], 2) == 0.0


def test_distinct_n():
    assert metrics.distinct_n([["a", "b"], ["a", "c"]], 1) == pytest.approx(75.0)
    assert metrics.distinct_n([], 2) == 0.0


def test_korean_scores_use_morphemes():
    same = metrics.korean_scores(["학교에 갑니다"], ["학교에 갑니다"])
    assert same["rouge_1"] == pytest.approx(100.0) and same["rouge_l"] == pytest.approx(100.0)
    part = metrics.korean_scores(["학교에 갑니다"], ["학교로 갑니다"])
    assert 0 < part["rouge_1"] < 100  # 학교 and 갑니다 match as morphemes, the particle not


def test_task_scores_pick_the_task_metrics():
    assert set(metrics.task_scores("translate", ["a b"], ["a b"])) == {"bleu", "chrf"}
    assert "rouge_l" in metrics.task_scores("respond", ["가"], ["가"])
