"""`hanseq-client` as a user runs it, against a real server; and the attention plots."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import font_manager

from hanseq_client import Attention, Client
from hanseq_client import plot as P
from tests.conftest import free_port, reversal_pairs

BIN = Path(sys.executable).parent
TEXTS = [line.split("\t")[0] for line in reversal_pairs(70, seed=91)]


def cli(*args: str, stdin: str | None = None, target: str | None = None):
    flags = ["--target", target] if target else []
    return subprocess.run(
        [str(BIN / "hanseq-client"), *flags, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HANSEQ_TOKEN": ""},
    )


@pytest.fixture(scope="module")
def target(hanseq_server):
    return hanseq_server.target


@pytest.fixture(scope="module")
def client(target):
    with Client(target, timeout=60) as c:
        yield c


def test_text_argument_prints_the_output(target, client):
    run = cli("translate", TEXTS[0], target=target)
    assert run.returncode == 0, run.stderr
    assert run.stdout == client.translate(TEXTS[0]).text + "\n"


def test_stdin_batch_keeps_line_order(target, client):
    lines = TEXTS[:67]
    lines[5] = lines[40] = ""  # an empty line gives an empty line
    run = cli("summarize", "--batch-size", "4", "--concurrency", "3", target=target,
              stdin="\n".join(lines) + "\n")  # fmt: skip
    assert run.returncode == 0, run.stderr
    expected = [client.summarize(t).text if t else "" for t in lines]
    assert run.stdout.split("\n")[:-1] == expected


def test_json_carries_the_whole_response(target):
    run = cli("generate", "translate", "--json", "--beam", "3", "--n-best", "2",
              "--attention", target=target, stdin=f"{TEXTS[1]}\n\n{TEXTS[2]}\n")  # fmt: skip
    assert run.returncode == 0, run.stderr
    first, empty, second = (json.loads(line) for line in run.stdout.splitlines())
    assert empty is None and first["model_id"] == second["model_id"] == "service-toy"
    assert len(first["alternatives"]) == 1 and first["timings"]["batch_size"] >= 1
    assert first["attention"]["source_tokens"][-1] == "</s>"


def test_respond_with_history(target, client):
    run = cli("respond", "--user", "안녕", "--service", "안녕하세요", TEXTS[3], target=target)
    assert run.returncode == 0, run.stderr
    history = [("안녕", True), ("안녕하세요", False)]
    assert run.stdout.strip() == client.respond(TEXTS[3], history).text


def test_models_table_and_json(target):
    table = cli("models", target=target)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "task",
        "model",
        "version",
        "metric",
        "valid",
        "score",
        "context",
        "defaults",
    ]
    translate = table.stdout.splitlines()[1].split()
    assert translate[0] == "translate" and translate[-2] == "none"  # no context turns
    assert translate[-1] == "beam_size=1,length_penalty=0,no_repeat_ngram=0"
    assert "max_beam_size=8" in table.stdout
    as_json = json.loads(cli("--target", target, "models", "--json").stdout)
    assert [t["task"] for t in as_json["tasks"]] == ["translate", "respond", "summarize"]


def test_errors_are_one_line_with_the_status(target):
    empty = cli("translate", "", target=target)
    assert empty.returncode == 2
    assert empty.stderr == "hanseq-client: INVALID_ARGUMENT: text: must not be empty\n"
    long = cli("translate", target=target, stdin=f"{TEXTS[0]}\n{'가' * 2001}\n")
    assert long.returncode == 2 and "line 2: is 2001 characters; the limit is 2000" in long.stderr
    down = cli("--timeout", "20", "models", target=f"127.0.0.1:{free_port()}")  # > retries
    assert down.returncode == 1 and down.stderr.startswith("hanseq-client: UNAVAILABLE")
    assert cli("translate", "--beam", "x", target=target).returncode == 2  # argparse


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--beam", "0"], "options.beam_size"),
        (["--max-length", "0"], "options.max_length"),
        (["--sample", "--temperature", "0"], "options.temperature"),
    ],
)
def test_a_zero_is_passed_on_for_the_server_to_judge(target, flags, field):
    """Zero is a value, not "unset": the server refuses it, naming the field."""
    run = cli("translate", *flags, TEXTS[0], target=target)
    assert run.returncode == 2 and f"INVALID_ARGUMENT: {field}: must be between" in run.stderr


def test_a_cut_input_is_said_on_stderr_with_its_line(target, client):
    long = " ".join(["사과"] * 30)  # 30 tokens; the toy model reads 19
    run = cli("translate", target=target, stdin=f"{TEXTS[0]}\n{long}\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[1] == client.translate(long).text  # answered all the same
    message = "line 2: input longer than the model reads: only its first 19 tokens were decoded"
    assert message in run.stderr and "line 1" not in run.stderr
    one = cli("translate", long, target=target)
    assert "hanseq-client: input longer than the model reads" in one.stderr


def test_help_lists_commands_and_flags():
    run = cli("--help")
    assert run.returncode == 0
    for word in ["translate", "respond", "summarize", "generate", "models", "--target"]:
        assert word in run.stdout
    sub = cli("translate", "--help").stdout
    for flag in ["--plot-attention", "--json", "--beam", "--top-p", "--no-cache", "--font"]:
        assert flag in sub


# -- attention plots -------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_attention_writes_a_png_that_grows_with_the_matrix(target, tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    run = cli("translate", "사과 바다", "--plot-attention", str(small), target=target)
    assert run.returncode == 0, run.stderr
    assert "missing from" not in run.stderr  # matplotlib's warning for a glyph it cannot draw
    long_text = " ".join(TEXTS[4].split() + TEXTS[5].split())
    run = cli("translate", long_text, "--plot-attention", str(large), target=target)
    assert run.returncode == 0, run.stderr
    (w1, h1), (w2, h2) = png_size(small), png_size(large)
    assert w2 > w1 and h2 >= h1


def test_plot_uses_a_font_that_has_hangul(tmp_path):
    attention = Attention(
        ["▁사과", "▁바다", "</s>"], ["▁바다", "</s>"], [[0.2, 0.7, 0.1], [0, 0, 1]]
    )
    family = P.find_font(attention.source_tokens)
    assert "Nanum" in family or "CJK" in family or "KR" in family
    P.plot_attention(attention, tmp_path / "a.png")  # warnings are errors here: no tofu
    assert png_size(tmp_path / "a.png")[0] > 100


def test_a_font_without_hangul_is_refused_clearly(target, tmp_path):
    dejavu = font_manager.findfont("DejaVu Sans")
    run = cli("translate", "사과", "--plot-attention", str(tmp_path / "x.png"), "--font", dejavu,
              target=target)  # fmt: skip
    assert run.returncode == 2 and "has no glyphs for 한" in run.stderr
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(P.FontNotFound, match="sudo apt-get install fonts-nanum"):
        P.find_font(["\ue000"])  # a private-use character no font draws


def test_plot_attention_needs_exactly_one_input(target, tmp_path):
    run = cli("translate", "--plot-attention", str(tmp_path / "x.png"), target=target,
              stdin=f"{TEXTS[0]}\n{TEXTS[1]}\n")  # fmt: skip
    assert run.returncode == 2 and "draws one input" in run.stderr


@pytest.mark.parametrize(
    "name, magic", [("a.jpg", b"\xff\xd8\xff"), ("a.svg", b"<?xml"), ("a.pdf", b"%PDF")]
)
def test_plot_attention_writes_the_format_its_name_asks_for(target, tmp_path, name, magic):
    run = cli("translate", "사과 바다", "--plot-attention", str(tmp_path / name), target=target)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / name).read_bytes().startswith(magic)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--plot-attention", "{tmp}/a.gif"], "--plot-attention: {tmp}/a.gif: cannot write .gif"),
        (["--plot-attention", "{tmp}/missing/a.png"], "is not a folder; create it first"),
        (["--attention"], "--attention shows in --json output"),
    ],
)
def test_plot_and_attention_mistakes_are_one_line(target, tmp_path, flags, message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    run = cli("translate", "사과 바다", *flags, target=target)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (
        run.stderr.startswith("hanseq-client: ")
        and message.replace("{tmp}", str(tmp_path)) in run.stderr
    )


def test_plot_labels_drop_word_marks_and_thin_out_on_long_inputs():
    assert P.tick_labels(["▁사과", "를", "▁", "</s>"]) == (
        [0, 1, 2, 3],
        ["사과", "를", "▁", "</s>"],
    )
    positions, labels = P.tick_labels([f"▁t{i}" for i in range(150)])
    assert positions == list(range(0, 150, 3)) and labels[1] == "t3" and len(labels) <= 60


def test_a_bad_stdin_line_gets_its_error_and_the_others_their_answers(target, client):
    lines = [TEXTS[0].encode(), ("가" * 2001).encode(), b"\xff\xfe broken", TEXTS[1].encode()]
    run = subprocess.run(
        [str(BIN / "hanseq-client"), "--target", target, "translate", "--batch-size", "4"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=120,
        env={**os.environ, "HANSEQ_TOKEN": ""},
    )
    out, err = run.stdout.decode(), run.stderr.decode()
    assert run.returncode == 2 and "Traceback" not in err
    assert out.split("\n")[:4] == [
        client.translate(TEXTS[0]).text,
        "",
        "",
        client.translate(TEXTS[1]).text,
    ]
    assert "line 2: is 2001 characters; the limit is 2000" in err
    assert "line 3: not valid UTF-8 (byte 1)" in err
    assert "2 input line(s) got no result" in err


def test_stream_reload_and_n_best_commands(target, client):
    streamed = cli("stream", "respond", TEXTS[2], "--sample", "--seed", "5", target=target)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == client.respond(TEXTS[2], sample=True, seed=5).text + "\n"
    reloaded = cli("reload", target=target)
    assert reloaded.returncode == 0, reloaded.stderr
    assert [line.split("\t")[0] for line in reloaded.stdout.splitlines()] == [
        "translate",
        "respond",
        "summarize",
    ]
    best = cli("translate", "--beam", "3", "--n-best", "3", TEXTS[3], target=target)
    result = client.translate(TEXTS[3], beam_size=3, n_best=3)
    expected = [result.text, *(a.text for a in result.alternatives)]
    assert best.returncode == 0 and best.stdout == "\t".join(expected) + "\n" and len(expected) == 3


def test_health_command_says_per_task_and_exits_1_unless_all_serve(target, client):
    run = cli("health", target=target)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "server\tSERVING", "translate\tSERVING", "respond\tSERVING", "summarize\tSERVING",
    ]  # fmt: skip
    some = cli("health", "summarize", "poetry", target=target)
    assert some.returncode == 1 and some.stdout == "summarize\tSERVING\npoetry\tSERVICE_UNKNOWN\n"
    assert client.health() == client.health("respond") == "SERVING"
    nobody = cli("health", target=f"127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr
    assert "Traceback" not in nobody.stderr
