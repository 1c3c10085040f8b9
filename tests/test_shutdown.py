"""Signals, against `hanseq serve` as a process. SIGHUP: the bundles are loaded again and the
new version serves. SIGTERM under load: in-flight requests complete, new ones are refused,
health goes SERVING -> NOT_SERVING, the process exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hanseq.v1 import hanseq_pb2 as pb
from hanseq.v1 import hanseq_pb2_grpc
from tests.conftest import free_port, reversal_pairs, start_server, wait_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_sighup_reloads_then_sigterm_drains_and_exits_0(service_bundle_path, tmp_path):
    models = shutil.copytree(service_bundle_path, tmp_path / "bundle")
    port = free_port()
    # A grace far longer than the wait below: the drain must end when its requests do, not when
    # the grace runs out (an open health Watch once held it for the whole grace).
    server = start_server(models, port, grace_period_s="600")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, server)
        stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
        manifest = json.loads((models / "bundle.json").read_text())
        manifest["version"] = "after-sighup"
        (models / "bundle.json").write_text(json.dumps(manifest))
        server.send_signal(signal.SIGHUP)
        assert _eventually(
            lambda: (
                {t.model_version for t in stub.ListModels(pb.ListModelsRequest()).tasks}
                == {"after-sighup"}
            )
        )
        statuses: list[int] = []
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="hanseq.v1.Seq2Seq/translate")
        )

        def follow() -> None:
            try:
                for reply in watch:
                    statuses.append(reply.status)
            except grpc.RpcError:  # the stream ends when the server is gone
                pass

        watcher = threading.Thread(target=follow)
        watcher.start()
        slow = pb.DecodingOptions(min_length=60, max_length=64, beam_size=2)
        texts = [line.split("\t")[0] for line in reversal_pairs(24, seed=41)]
        futures = [
            stub.Translate.future(pb.TranslateRequest(text=t, options=slow), timeout=120)
            for t in texts
        ]
        time.sleep(0.5)  # in flight: queued or decoding
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = stub.Translate.future(pb.TranslateRequest(text=texts[0]), timeout=10)
        replies = [f.result() for f in futures]  # every in-flight request completes
        assert len(replies) == 24 and all(len(r.target_tokens) == 0 and r.text for r in replies)
        try:
            refused.result()
            raise AssertionError("a request after SIGTERM was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert server.wait(timeout=120) == 0
        watcher.join(timeout=10)
        assert statuses[0] == SERVING and NOT_SERVING in statuses
    finally:
        channel.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def _eventually(check, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_a_second_server_on_a_port_in_use_refuses_to_start(service_bundle_path):
    """gRPC shares a port by default (SO_REUSEPORT): two servers would answer calls in turn.
    The second must say the port is taken and exit non-zero, and the first serve on."""
    port = free_port()
    first = start_server(service_bundle_path, port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, first)
        env = {
            **os.environ,
            "HANSEQ_PORT": str(port),
            "HANSEQ_METRICS_PORT": "-1",
            "HANSEQ_MODELS": str(service_bundle_path),
            "HANSEQ_DEVICES": "cpu",
        }
        second = subprocess.run(
            [str(Path(sys.executable).parent / "hanseq"), "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"port (HANSEQ_PORT) {port}: cannot listen" in second.stderr
        assert "Traceback" not in second.stderr
        stub = hanseq_pb2_grpc.Seq2SeqStub(channel)
        assert stub.ListModels(pb.ListModelsRequest(), timeout=30).tasks  # the first serves on
    finally:
        channel.close()
        first.terminate()
        assert first.wait(60) == 0
