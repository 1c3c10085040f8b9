"""Dialogue that reads the conversation (speaker-marked sources, trained from *.context.jsonl)
and per-task decoding defaults recorded in the bundle, from training to ListModels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from hanseq.engine import cli as engine_cli
from hanseq.engine.bundle import Side, load_bundle
from hanseq.engine.config import ConfigurationError, TaskConfig, from_dict, validate
from hanseq.engine.data import Example, with_context
from hanseq.engine.dialogue import (
    SERVICE_MARK,
    USER_MARK,
    ContextError,
    Turn,
    read_histories,
    source_text,
    split_marks,
)
from hanseq.engine.options import InvalidOptions, SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.tokenizers import build_tokenizer
from hanseq.engine.training import train, valid_subset
from hanseq.engine.vocabulary import Vocabulary
from hanseq.service.server import create_app
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import settings_for, three_task_config

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
HISTORY = [Turn("사과 포도 배", True), Turn("배 포도 사과", False)]


def test_source_marks_each_turn_and_keeps_a_lone_message_as_it_is():
    text = source_text(HISTORY, "바나나 귤", 4)
    assert text == f"{USER_MARK} 사과 포도 배 {SERVICE_MARK} 배 포도 사과 {USER_MARK} 바나나 귤"
    assert (
        source_text(HISTORY, "바나나 귤", 1) == f"{SERVICE_MARK} 배 포도 사과 {USER_MARK} 바나나 귤"
    )
    assert source_text([], "바나나 귤", 4) == "바나나 귤"
    assert source_text(HISTORY, "바나나 귤", 0) == "바나나 귤"  # a bundle without context


def test_a_caller_cannot_smuggle_in_a_speaker_mark():
    text = source_text([Turn(f"안녕 {SERVICE_MARK} 가짜", True)], f"{USER_MARK}질문", 2)
    assert split_marks(text) == [USER_MARK, " 안녕   가짜 ", USER_MARK, "  질문"]


def test_marks_stay_whole_only_where_the_vocabulary_has_them():
    tokenizer = build_tokenizer(from_dict(TaskConfig, {}, "").target)  # plain Mecab
    text = source_text(HISTORY[:1], "바나나", 2)
    plain = Side(tokenizer, Vocabulary(["▁사과", "▁바나나"]))
    marked = Side(tokenizer, Vocabulary(["▁사과", "▁바나나", USER_MARK, SERVICE_MARK]))
    assert marked.tokenize(text) == [USER_MARK, "▁사과", "▁포도", "▁배", USER_MARK, "▁바나나"]
    assert USER_MARK not in plain.tokenize(text)  # an old bundle reads the text as text


def test_context_turns_need_the_history_file():
    cfg = three_task_config(Path("/nonexistent"), Path("/nonexistent"))
    cfg.tasks["respond"].context_turns = 2
    with pytest.raises(ConfigurationError, match=r"tasks.respond.train_context"):
        validate(cfg)
    cfg.tasks["respond"].context_turns = -1
    with pytest.raises(ConfigurationError, match=r"tasks.respond.context_turns: must be >= 0"):
        validate(cfg)


def test_history_files_attach_to_their_pairs_and_name_a_bad_line(tmp_path):
    path = tmp_path / "train.context.jsonl"
    row = {"message": "b", "reply": "c", "history": [{"text": "a", "from_user": True}]}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    examples, changed = with_context(
        [Example("b", "c"), Example("x", "y")], read_histories(path), 2
    )
    assert changed == 1 and examples[0].source == f"{USER_MARK} a {USER_MARK} b"
    assert examples[1].source == "x"
    path.write_text(json.dumps(row) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ContextError, match=r"train.context.jsonl:2"):
        read_histories(path)


def test_validation_subset_draws_every_origin_in_turn():
    examples = [Example(str(i), "t", "v1") for i in range(10)]
    examples += [Example(f"n{i}", "t", "new") for i in range(3)]
    picked = valid_subset(examples, 6)
    assert [e.origin for e in picked] == ["v1", "new"] * 3
    assert valid_subset(examples, 0) == examples


def test_decoding_defaults_are_checked():
    with pytest.raises(InvalidOptions, match="only beam_size, length_penalty, no_repeat_ngram"):
        engine_cli._decoding_flags(["respond:temperature=2"], ["respond"])
    with pytest.raises(InvalidOptions, match="no task 'nope'"):
        engine_cli._decoding_flags(["nope:beam_size=2"], ["respond"])
    with pytest.raises(InvalidOptions, match="beam_size must be >= 1"):
        engine_cli._decoding_flags(["respond:beam_size=0"], ["respond"])
    parsed = engine_cli._decoding_flags(["respond:beam_size=3,length_penalty=0.6"], ["respond"])
    assert parsed == {"respond": {"beam_size": 3, "length_penalty": 0.6}}


# ---- a real bundle trained with context, exported with defaults, served -----------------
@pytest.fixture(scope="module")
def context_bundle(toy_corpus, tmp_path_factory) -> Path:
    """The service's three toy heads, respond trained with 2 turns of history (toy lines
    whose history is another toy line), then exported with respond's decoding defaults."""
    root = tmp_path_factory.mktemp("dialogue")
    shutil.copy(toy_corpus / "train.tsv", root / "train.tsv")
    shutil.copy(toy_corpus / "valid.tsv", root / "valid.tsv")
    lines = [line.split("\t") for line in (root / "train.tsv").read_text().splitlines()]
    with (root / "train.context.jsonl").open("w", encoding="utf-8") as f:
        for (source, target, _), (before, _, _) in zip(lines[1:300], lines[:299], strict=True):
            history = [{"text": before, "from_user": True}, {"text": "네", "from_user": False}]
            row = {"message": source, "reply": target, "history": history}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    cfg = three_task_config(root, tmp_path_factory.mktemp("dialogue-run"))
    cfg.tasks["respond"].context_turns = 2
    cfg.tasks["respond"].train_context = "train.context.jsonl"
    trained = train(cfg, resume=False)
    out = tmp_path_factory.mktemp("dialogue-models") / "b"
    flags = ["--decoding", "respond:beam_size=3,length_penalty=0.6"]
    assert engine_cli.main(["export", "--model", str(trained), "--output", str(out), *flags]) == 0
    return out


def test_the_bundle_records_context_and_defaults(context_bundle):
    bundle = load_bundle(context_bundle)
    assert bundle.context_turns("respond") == 2 and bundle.context_turns("translate") == 0
    assert bundle.decoding("respond") == {"beam_size": 3, "length_penalty": 0.6}
    assert bundle.decoding("translate") == {}
    assert USER_MARK in bundle.source.vocab.stoi and SERVICE_MARK in bundle.source.vocab.stoi


def test_eval_applies_the_bundle_defaults(context_bundle, toy_corpus, capsys):
    args = ["eval", "--model", str(context_bundle), "--task", "respond"]
    args += ["--data", str(toy_corpus / "valid.tsv"), "--max-examples", "5"]
    assert engine_cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["beam"] == 3 and result["length_penalty"] == 0.6
    assert engine_cli.main([*args, "--beam", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["beam"] == 1  # a flag wins over the bundle


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(context_bundle):
    app = await create_app(settings_for(context_bundle))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield hanseq_pb2_grpc.Seq2SeqStub(channel)
    await channel.close()
    await app.stop()


@IN_MODULE_LOOP
async def test_list_models_tells_context_and_defaults(served):
    reply = await served.ListModels(pb.ListModelsRequest())
    tasks = {t.task: t for t in reply.tasks}
    assert tasks["respond"].context_turns == 2 and tasks["translate"].context_turns == 0
    defaults = tasks["respond"].defaults
    assert defaults.beam_size == 3 and defaults.length_penalty == pytest.approx(0.6)
    assert tasks["translate"].defaults.beam_size == 1


@IN_MODULE_LOOP
async def test_respond_reads_the_history_with_the_bundle_defaults(served, context_bundle):
    offline = Pipeline.from_bundle(load_bundle(context_bundle))
    opts = SearchOptions(beam_size=3, length_penalty=0.6, max_length=20)
    message, turns = "사과 포도 배", [pb.Turn(text="바나나 귤", from_user=True), pb.Turn(text="네")]
    reply = await served.Respond(pb.RespondRequest(message=message, history=turns))
    history = [Turn(t.text, t.from_user) for t in turns]
    expect = offline.generate("respond", [source_text(history, message, 2)], opts)[0]
    assert reply.text == expect.text
    alone = await served.Respond(pb.RespondRequest(message=message))
    assert alone.text == offline.generate("respond", [message], opts)[0].text
    greedy = await served.Respond(
        pb.RespondRequest(message=message, options=pb.DecodingOptions(beam_size=1))
    )
    assert (
        greedy.text == offline.generate("respond", [message], SearchOptions(max_length=20))[0].text
    )
