"""Prometheus metrics: what the service is doing, on ``/metrics`` (``HANSEQ_METRICS_PORT``).

Names follow Prometheus conventions: the ``hanseq_`` prefix, base units (seconds, bytes),
``_total`` on counters. The standard gRPC server metrics (``grpc_server_*``, as the Go and
Java interceptors name them) come from our own interceptor, since py-grpc-prometheus has no
asyncio one. Gauges that describe the current state (queue depth, workers, bundles) are read
at scrape time, so they cannot drift from the truth, and so are the worker processes'
memory (their own RSS, and GPU memory where NVML sees them). Each App has its own registry:
several servers can live in one process (the tests do that). No ``_created`` series: they
double the series count and no query reads them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # process-wide in prometheus_client; hanseq never reads them

# 1 ms to 30 s: a cache hit, a short greedy answer, a long beam search, a stuck queue.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "hanseq_requests",
            "Task requests answered, by status code",
            ["task", "code"],
            registry=r,
        )
        self.batch_items = Counter(
            "hanseq_batch_items",
            "GenerateBatch inputs answered, by their own status code (the call's is in requests)",
            ["task", "code"],
            registry=r,
        )
        self.model_requests = Counter(
            "hanseq_model_requests",
            "Task requests routed to each model version (a traffic split's shares)",
            ["model", "version", "task"],
            registry=r,
        )
        self.latency = Histogram(
            "hanseq_request_duration_seconds",
            "Time to answer a task request, receipt to reply",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "hanseq_queue_wait_seconds",
            "Time a request waited for a worker",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hanseq_batch_size",
            "Rows decoding together when a request joined its worker's batch",
            ["task"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "hanseq_compute_seconds",
            "Decoding time of a request on its worker",
            ["device", "task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "hanseq_generated_tokens",
            "Output tokens generated (EOS included)",
            ["task"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "hanseq_worker_restarts",
            "Workers started again after one died",
            ["device"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "hanseq_cache_lookups",
            "Cache lookups by layer and result",
            ["layer", "result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "hanseq_cache_errors", "Redis calls that failed or timed out", registry=r
        )
        grpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter(
            "grpc_server_started", "RPCs started on the server", grpc_labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            [*grpc_labels, "grpc_code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)
        self._gpu = _GpuCollector()
        r.register(self._gpu)
        self._server: Any = None
        self.port = 0

    def watch(self, state: Callable[[], dict[str, Any]]) -> None:
        """Gauges read at scrape time from ``state()`` (see _StateCollector)."""
        self.registry.register(_StateCollector(state, self._gpu))

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on its own thread -> the port (``port`` 0 = any free one)."""
        self._server, _ = start_http_server(port, host, registry=self.registry)
        self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StateCollector(Collector):
    """queue depth per task, workers alive/busy, and the bundle serving each task.

    ``state()`` -> {"queued": {task: n}, "queue_limit": n, "alive": n, "busy": n,
    "tasks": {task: info}, "workers": [{"worker": "0", "device": "cpu", "pid": n}, ...]}."""

    def __init__(self, state: Callable[[], dict[str, Any]], gpu: _GpuCollector):
        self.state, self.gpu = state, gpu

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        queued = GaugeMetricFamily(
            "hanseq_queue_depth", "Requests waiting for a worker", labels=["task"]
        )
        for task, n in sorted(state["queued"].items()):
            queued.add_metric([task], n)
        yield queued
        yield GaugeMetricFamily(
            "hanseq_queue_limit",
            "Queued requests per task before RESOURCE_EXHAUSTED (max_queue_size)",
            value=state["queue_limit"],
        )
        yield GaugeMetricFamily("hanseq_workers_alive", "Live workers", value=state["alive"])
        yield GaugeMetricFamily(
            "hanseq_workers_busy", "Workers decoding at least one row", value=state["busy"]
        )
        info = InfoMetricFamily("hanseq_bundle", "The bundle serving each task", labels=["task"])
        for task, i in sorted(state["tasks"].items()):
            info.add_metric([task], {"model_id": i.model_id, "version": i.model_version})
        yield info
        share = GaugeMetricFamily(
            "hanseq_model_traffic_ratio",
            "Each served model version's share of requests naming no version (0-1)",
            labels=["model", "version"],
        )
        for (model, version), ratio in sorted(state.get("shares", {}).items()):
            share.add_metric([model, version], ratio)
        yield share
        yield from self._workers(state.get("workers", []))

    def _workers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        """Each worker process's memory: the main process's own metrics do not include it."""
        labels = ["worker", "device"]
        rss = GaugeMetricFamily(
            "hanseq_worker_resident_memory_bytes",
            "Resident memory of a worker process",
            labels=labels,
        )
        on_gpu = GaugeMetricFamily(
            "hanseq_worker_gpu_memory_bytes", "GPU memory a worker process holds", labels=labels
        )
        gpu_use = self.gpu.memory_by_pid() if any(w["device"] != "cpu" for w in workers) else {}
        for w in workers:
            resident = _resident_bytes(w["pid"])
            if resident is not None:
                rss.add_metric([w["worker"], w["device"]], resident)
            if w["pid"] in gpu_use:
                on_gpu.add_metric([w["worker"], w["device"]], gpu_use[w["pid"]])
        yield rss
        if gpu_use:
            yield on_gpu


def _resident_bytes(pid: int) -> float | None:
    """RSS from /proc (Linux; elsewhere nothing): statm's second field, in pages."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):  # exited meanwhile, or not Linux
        return None
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


class _GpuCollector(Collector):
    """GPU memory used/total and utilisation per device, read through NVML (nvidia-ml-py),
    which needs no CUDA context in the server process. Where there is no NVIDIA driver the
    collector yields nothing, and stops asking after the first failure."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._absent = False

    def collect(self) -> Iterator[Metric]:
        handles = self._devices()
        if not handles:
            return
        used = GaugeMetricFamily(
            "hanseq_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
        )
        total = GaugeMetricFamily("hanseq_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        busy = GaugeMetricFamily(
            "hanseq_gpu_utilization_ratio", "Time the GPU was busy (0-1)", labels=["gpu"]
        )
        nvml = self._nvml
        for index, handle in enumerate(handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            except nvml.NVMLError as e:
                log.warning("NVML read of GPU %d failed: %s", index, e)
                continue
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
            busy.add_metric([str(index)], rates.gpu / 100.0)
        yield from (used, total, busy)

    def memory_by_pid(self) -> dict[int, float]:
        """GPU memory each process holds, summed over the devices (empty without NVML)."""
        used: dict[int, float] = {}
        for handle in self._devices():
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self._nvml.NVMLError as e:
                log.warning("NVML process list failed: %s", e)
                continue
            for p in processes:
                used[p.pid] = used.get(p.pid, 0.0) + float(p.usedGpuMemory or 0)
        return used

    def _devices(self) -> list[Any]:
        if self._absent:
            return []
        try:
            import pynvml

            if self._nvml is None:
                pynvml.nvmlInit()
                self._nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # no driver, no library: a CPU machine
            self._absent = True
            return []
