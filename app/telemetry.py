"""Prometheus metrics of one server (prometheus-client), rendered by GET /metrics.

Counts that live elsewhere (jobs by status and the queue in the job store, the engine's batches, rows and
adapter cache) are read when scraped by a collector, so they are right across worker processes and restarts;
latencies and batch sizes are observed as they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predict_seconds = Histogram(
            "peftserve_predict_seconds",
            "Time from a prediction request being queued to its answer",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "peftserve_predict_batch_rows",
            "Rows per forward pass of the inference engine",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        """Report the state `read()` returns at each scrape (see `_State`)."""
        self.registry.register(_State(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _State(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]):
        self.read = read

    def collect(self) -> Iterator[Any]:
        state = self.read()
        jobs = GaugeMetricFamily("peftserve_jobs", "Jobs by status", labels=["status"])
        for status, n in state["jobs"].items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("peftserve_queue_length", "Jobs waiting for a worker", value=state["jobs"]["queued"])
        speed = GaugeMetricFamily(
            "peftserve_training_samples_per_second",
            "Training throughput of each running job (its current attempt)",
            labels=["job_id", "adapter"],
        )
        for job_id, adapter, rate in state["training"]:
            speed.add_metric([job_id, adapter], rate)
        yield speed
        engine = state["engine"]
        yield GaugeMetricFamily("peftserve_adapters_loaded", "Adapters resident in the engine", value=engine["loaded"])
        for name, key, text in (
            ("peftserve_adapter_cache_hits", "hits", "Requests whose adapter was already resident"),
            ("peftserve_adapter_cache_misses", "loads", "Adapter loads into the engine (cache misses)"),
            ("peftserve_adapter_cache_evictions", "evictions", "Adapters evicted from the engine (LRU)"),
            ("peftserve_predict_batches", "batches", "Forward passes run by the inference engine"),
            ("peftserve_predict_rows", "rows", "Texts classified by the inference engine"),
        ):
            yield CounterMetricFamily(name, text, value=engine[key])
