"""Scores for generated text: BLEU/chrF (sacrebleu); ROUGE and distinct-n on Mecab morphemes.

ROUGE packages tokenize English; Korean needs morphemes, so ROUGE is computed here: per
sentence F1 of n-gram overlap (ROUGE-N) and of the longest common subsequence (ROUGE-L),
averaged over the corpus, in percent like BLEU.
"""

from __future__ import annotations

from collections import Counter

import sacrebleu

from hanseq.engine import korean


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    # tokenize="none": the caller split the text itself (Korean morphemes), on purpose
    force = tokenize == "none"
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize, force=force).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    return sacrebleu.corpus_chrf(hypotheses, [references]).score


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hyp: list[str], ref: list[str]) -> float:
    return _f1(lcs_length(hyp, ref), len(hyp), len(ref))


def distinct_n(sentences: list[list[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over the outputs (diversity; Li et al., 2016)."""
    grams = [g for s in sentences for g in _ngrams(s, n)]
    total = sum(sum(_ngrams(s, n).values()) for s in sentences)
    return 100.0 * len(set(grams)) / total if total else 0.0


def korean_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """respond / summarize: ROUGE-1/2/L and BLEU on morphemes, distinct-1/2."""
    hyp = [korean.strip_marks(korean.tokenize(h)) for h in hypotheses]
    ref = [korean.strip_marks(korean.tokenize(r)) for r in references]
    count = max(len(hyp), 1)
    return {
        "rouge_1": 100.0 * sum(rouge_n(h, r, 1) for h, r in zip(hyp, ref, strict=True)) / count,
        "rouge_2": 100.0 * sum(rouge_n(h, r, 2) for h, r in zip(hyp, ref, strict=True)) / count,
        "rouge_l": 100.0 * sum(rouge_l(h, r) for h, r in zip(hyp, ref, strict=True)) / count,
        "bleu": bleu([" ".join(h) for h in hyp], [" ".join(r) for r in ref], tokenize="none"),
        "distinct_1": distinct_n(hyp, 1),
        "distinct_2": distinct_n(hyp, 2),
    }


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references)}


def task_scores(task: str, hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """The evaluation a task gets: translation metrics for translate, Korean ones otherwise."""
    if task == "translate":
        return translation_scores(hypotheses, references)
    return korean_scores(hypotheses, references)
