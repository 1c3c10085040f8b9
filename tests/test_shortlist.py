"""Vocabulary shortlists: the table counted from training pairs, the per-row column sets, and
decoding through them on the trained toy model (reversal: each target word is the twin of a
source word, so a table of one entry per source piece names everything a row needs)."""

from __future__ import annotations

import pytest
import torch

from hanseq.engine.bundle import load_bundle
from hanseq.engine.continuous import RunningBatch
from hanseq.engine.data import encode, read_tsv
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.search import search
from hanseq.engine.shortlist import LexicalTable, RowShortlist
from hanseq.engine.vocabulary import EOS_ID, SPECIALS
from tests.conftest import encode_texts, reversal_pairs

INPUTS = [line.split("\t")[0] for line in reversal_pairs(40, seed=33)]
TASK = "reverse"


def test_table_ranks_the_twin_first_and_leaves_frequent_pieces_to_the_frequent_list():
    # source 10 always comes with target 20; target 5 is in every target (frequent).
    sources = [[10, 11], [10, 12], [10, 11], [12, 11]]
    targets = [[20, 5, 21], [20, 5], [20, 5, 21], [5, 22]]
    lex = LexicalTable.build(sources, targets, 13, 23, top=2, frequent=5)
    assert lex.frequent.tolist() == [0, 1, 2, 3, 5]
    assert lex.table[10, 0] == 20  # p(20 | 10) = 1
    assert 5 not in lex.table.flatten().tolist()  # always allowed: no entry spent on it
    assert lex.table[11].tolist() == [20, 21]  # 2 of 3 each (ties by id); 22: 1 of 3, cut
    assert (lex.table[: len(SPECIALS)] == EOS_ID).all()
    assert lex.table[0].tolist() == [EOS_ID, EOS_ID]  # padding: nothing
    assert lex.table[12].tolist() == [20, 22]


def test_rows_allow_frequent_entries_and_copyable_pieces_each_its_own():
    lex = LexicalTable(
        table=torch.tensor([[EOS_ID]] * 4 + [[7], [8], [9]]), frequent=torch.arange(4)
    )
    src = torch.tensor([[4, 5], [6, 0]])
    copyable = torch.tensor([[11, -1], [-1, -1]])
    short = lex.rows(src, copyable)
    assert short.columns.tolist() == [0, 1, 2, 3, 7, 8, 9, 11]
    allowed = [set(short.columns[row].tolist()) for row in short.allowed]
    assert allowed == [{0, 1, 2, 3, 7, 8, 11}, {0, 1, 2, 3, 9}]


def test_cat_keeps_each_rows_set_and_drops_columns_nobody_allows():
    lex = LexicalTable(
        table=torch.tensor([[EOS_ID]] * 4 + [[7], [8], [9]]), frequent=torch.arange(4)
    )
    a = lex.rows(torch.tensor([[4], [5]]))
    b = lex.rows(torch.tensor([[6]]))
    left = a.index_select(torch.tensor([1]))  # the row holding 7 is gone
    both = RowShortlist.cat(left, b)
    assert both.columns.tolist() == [0, 1, 2, 3, 8, 9]
    sets = [set(both.columns[row].tolist()) for row in both.allowed]
    assert sets == [{0, 1, 2, 3, 8}, {0, 1, 2, 3, 9}]


@pytest.fixture(scope="module")
def short_pipeline(toy_bundle_path, toy_corpus) -> Pipeline:
    """The toy model (its own copy) with a tight table: one entry per source piece, only the
    specials always allowed."""
    bundle = load_bundle(toy_bundle_path)
    examples = read_tsv(toy_corpus / "train.tsv")[0]
    enc = encode(examples, bundle.source, bundle.targets[TASK], 20, 20)
    sizes = len(bundle.source.vocab), len(bundle.targets[TASK].vocab)
    bundle.model.head(TASK).lexicon = LexicalTable.build(
        enc.sources, enc.targets, *sizes, top=1, frequent=len(SPECIALS)
    )
    return Pipeline.from_bundle(bundle)


@pytest.fixture(scope="module")
def full_pipeline(toy_bundle_path) -> Pipeline:
    return Pipeline.from_bundle(load_bundle(toy_bundle_path, shortlist=False))


def _allowed_ids(pipeline: Pipeline, texts: list[str]) -> list[set[int]]:
    src, _ = encode_texts(pipeline, texts)
    head = pipeline.model.head(TASK)
    short = head.lexicon.rows(src, None if head.copy is None else head.copy.mapping[src])
    return [set(short.columns[row].tolist()) for row in short.allowed]


def test_the_bundle_carries_its_table_and_loading_can_leave_it(toy_bundle_path, full_pipeline):
    assert load_bundle(toy_bundle_path).model.head(TASK).lexicon is not None
    assert full_pipeline.model.head(TASK).lexicon is None


@pytest.mark.parametrize(
    "opts", [SearchOptions(), SearchOptions(beam_size=4, n_best=2, length_penalty=1.0)]
)
def test_a_tight_table_decodes_what_the_whole_vocabulary_does(short_pipeline, full_pipeline, opts):
    """Everything a reversal needs is in each row's set, so greedy and beam search give the
    same outputs (scores renormalize over fewer columns, so they are at least as high)."""
    short = short_pipeline.generate(TASK, INPUTS, opts)
    full = full_pipeline.generate(TASK, INPUTS, opts)
    assert [g.text for g in short] == [g.text for g in full]
    assert all(s.score >= f.score - 1e-4 for s, f in zip(short, full, strict=True))


@pytest.mark.parametrize(
    "opts",
    [
        SearchOptions(),
        SearchOptions(beam_size=3, n_best=3),
        SearchOptions(no_repeat_ngram=2),
        SearchOptions(beam_size=3, no_repeat_ngram=2, min_length=2),
    ],
)
def test_every_output_token_is_in_its_own_rows_set(short_pipeline, opts):
    """Also under n-gram blocking, whose banned ids must be found among the columns: an
    input repeating a word ("노래 노래 노래") then needs a word its set has not, and the
    row takes the best one it has instead."""
    texts = [*INPUTS, "의자 노래 노래 노래 기차 의자"]
    src, lengths = encode_texts(short_pipeline, texts)
    allowed = _allowed_ids(short_pipeline, texts)
    found = search(short_pipeline.model, TASK, src, lengths, opts)
    for hyps, ids in zip(found, allowed, strict=True):
        for hyp in hyps:
            assert set(hyp.tokens) <= ids
            if opts.no_repeat_ngram:
                bigrams = list(zip(hyp.tokens, hyp.tokens[1:], strict=False))
                assert len(bigrams) == len(set(bigrams))


def test_a_row_outputs_only_what_its_set_allows_even_when_the_model_wants_more(toy_bundle_path):
    """A table that allows one word whatever the source: every output is that word only."""
    bundle = load_bundle(toy_bundle_path)
    word = bundle.targets[TASK].vocab.stoi["▁바다"]  # Mecab marks where words start
    head = bundle.model.head(TASK)
    rows = len(bundle.source.vocab)
    head.lexicon = LexicalTable(
        table=torch.full((rows, 1), EOS_ID), frequent=torch.tensor([0, 1, 2, 3, word])
    )
    pipeline = Pipeline.from_bundle(bundle)
    for opts in (SearchOptions(max_length=6), SearchOptions(beam_size=2, max_length=6)):
        for g in pipeline.generate(TASK, INPUTS[:8], opts):
            assert set(g.text.split()) <= {"바다"}


def test_rows_joining_a_shortlisted_batch_decode_as_if_alone(short_pipeline):
    """The batch's columns change as rows join and leave; each row's own set does not, so a
    row decodes the same tokens whoever shares its batch."""
    opts = SearchOptions()
    alone = {}
    for key, text in enumerate(INPUTS):
        running = RunningBatch(short_pipeline.model, TASK, opts)
        running.join(*encode_texts(short_pipeline, [text]), [key])
        while running:
            for done in running.step():
                alone[done.key] = done.hypothesis
    running = RunningBatch(short_pipeline.model, TASK, opts)
    together, pending = {}, list(enumerate(INPUTS))
    while pending or running:
        if pending:
            key, text = pending.pop(0)
            running.join(*encode_texts(short_pipeline, [text]), [key])
        for done in running.step():
            together[done.key] = done.hypothesis
    assert {k: h.tokens for k, h in together.items()} == {k: h.tokens for k, h in alone.items()}
    for key in alone:
        assert together[key].score == pytest.approx(alone[key].score, abs=1e-4)


def test_sampling_sees_the_whole_vocabulary(short_pipeline):
    running = RunningBatch(short_pipeline.model, TASK, SearchOptions(sampling=True, seed=1))
    running.join(*encode_texts(short_pipeline, INPUTS[:4]), range(4))
    assert running._memory is not None and running._memory.shortlist is None
    running = RunningBatch(short_pipeline.model, TASK, SearchOptions())
    running.join(*encode_texts(short_pipeline, INPUTS[:4]), range(4))
    assert running._memory is not None and running._memory.shortlist is not None
