"""Prometheus metric objects, held per relay instance (no process-global registry)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_ACK_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_DELIVERY_BUCKETS_SECONDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Metrics:
    """Every metric the relay exports, registered in its own registry (docs/metrics.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge, histogram = self._counter, self._gauge, self._histogram
        self.webhooks = counter(
            "pulse_relay_webhooks", "Webhook requests answered, by outcome.", "outcome"
        )
        self.ack_seconds = histogram(
            "pulse_relay_ack_seconds",
            "Time from the request arriving to its answer being ready.",
            _ACK_BUCKETS_SECONDS,
        )
        self.job_fetches = counter(
            "pulse_relay_job_fetches",
            "Canonical job fetches from the Pulse API, by outcome.",
            "outcome",
        )
        self.deliveries = counter(
            "pulse_relay_deliveries", "Delivery attempts, by sink and outcome.", "sink", "outcome"
        )
        self.delivery_seconds = histogram(
            "pulse_relay_delivery_seconds",
            "Duration of delivery attempts, by sink.",
            _DELIVERY_BUCKETS_SECONDS,
            "sink",
        )
        self.pending = gauge("pulse_relay_pending", "Deliveries waiting, by sink.", "sink")
        self.rate_limited = gauge(
            "pulse_relay_rate_limited",
            "Deliveries due to a rate-limited sink and not started yet, by sink.",
            "sink",
        )
        self.oldest_pending_seconds = gauge(
            "pulse_relay_oldest_pending_seconds", "Age of the oldest event with work still pending."
        )
        self.polls = counter(
            "pulse_relay_polls", "Job polls made by the poller, by outcome.", "outcome"
        )
        self.pruned_events = counter(
            "pulse_relay_pruned_events",
            "Finished events deleted by retention (the daily task and `prune`).",
        )
        self.proxy_requests = counter(
            "pulse_relay_proxy_requests",
            "Requests to the Pulse API pass-through, by outcome.",
            "outcome",
        )
        self.proxy_pending_watches = gauge(
            "pulse_relay_proxy_pending_watches",
            "Watches found by the pass-through that the store has not taken yet (retried).",
        )
        self.reloads = counter(
            "pulse_relay_config_reloads", "Configuration reloads on SIGHUP, by outcome.", "outcome"
        )

    def set_rate_limited(self, held_back: Mapping[str, int]) -> None:
        """The rate-limited sinks' held-back counts; a sink whose limit a reload removed
        loses its series rather than keeping a stale count."""
        self.rate_limited.clear()
        for sink, count in held_back.items():
            self.rate_limited.labels(sink=sink).set(count)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
