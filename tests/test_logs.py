"""The server's logs: one JSON object per line (HANSEQ_LOG_FORMAT=json) carrying what a log
pipeline filters on, and the text format a person reads at a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc

from hanseq.service import logs
from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import REPO, free_port, wait_serving


def _record(fields: dict, exc: bool = False) -> logging.LogRecord:
    """A request's log record as the interceptor makes it (its fields in ``fields``)."""
    exc_info = None
    if exc:
        try:
            raise ValueError("broken")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "hanseq.requests", logging.INFO, __file__, 1, "%s %s", ("Translate", "OK"), exc_info
    )
    record.fields = fields
    return record


def test_json_lines_hold_the_fields_and_the_traceback_in_one_line():
    line = logs.JsonFormatter().format(_record({"request_id": "r1", "cached": True}, exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "Translate OK" and entry["level"] == "INFO"
    assert entry["request_id"] == "r1" and entry["cached"] is True
    assert entry["time"].endswith("Z") and "ValueError: broken" in entry["exception"]


def test_text_lines_put_the_fields_after_the_message():
    line = logs.TextFormatter().format(_record({"request_id": "r1", "ms": 3.5}))
    assert line.endswith("INFO hanseq.requests: Translate OK request_id=r1 ms=3.5")


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, kind in ((Terminal(), logs.TextFormatter), (io.StringIO(), logs.JsonFormatter)):
        logs.configure("INFO", "auto", stream)
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler.formatter, kind)
    logging.getLogger().handlers.clear()


def test_a_served_request_is_one_json_line_with_its_timings(service_bundle_path, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HANSEQ_PORT": str(port),
        "HANSEQ_METRICS_PORT": "-1",
        "HANSEQ_MODELS": str(service_bundle_path),
        "HANSEQ_DEVICES": "cpu",
        "HANSEQ_LOG_FORMAT": "json",
    }
    err = (tmp_path / "stderr").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "hanseq"), "serve"], cwd=REPO, env=env, stderr=err
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, server)
            stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
            metadata = (("x-request-id", "log-test-1"),)
            stub.Translate(pb.TranslateRequest(text="사과 바다"), metadata=metadata, timeout=60)
    finally:
        server.terminate()
        server.wait(60)
        err.close()
    lines = [ln for ln in (tmp_path / "stderr").read_text().splitlines() if ln.startswith("{")]
    entries = [json.loads(ln) for ln in lines]  # every record of ours is a JSON object
    (call,) = [e for e in entries if e.get("request_id") == "log-test-1"]
    assert call["logger"] == "hanseq.requests" and call["method"] == "Translate"
    assert call["task"] == "translate" and call["code"] == "OK" and call["ms"] > 0
    assert call["batch_size"] >= 1 and call["cached"] is False
    assert call["compute_ms"] > 0 and call["queue_ms"] >= 0
    assert any(e["logger"] == "hanseq.server" and "serving" in e["message"] for e in entries)
