"""Prometheus metric objects, held per relay instance (no process-global registry)."""

from __future__ import annotations

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
    """Every metric the relay exports, registered in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            "pulse_relay_webhooks",
            "Webhook requests answered, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "pulse_relay_ack_seconds",
            "Time from the request arriving to its answer being ready.",
            buckets=_ACK_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.job_fetches = Counter(
            "pulse_relay_job_fetches",
            "Canonical job fetches from the Pulse API, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "pulse_relay_deliveries",
            "Delivery attempts, by sink and outcome.",
            ["sink", "outcome"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "pulse_relay_delivery_seconds",
            "Duration of delivery attempts, by sink.",
            ["sink"],
            buckets=_DELIVERY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.pending = Gauge(
            "pulse_relay_pending",
            "Deliveries waiting, by sink.",
            ["sink"],
            registry=self.registry,
        )
        self.oldest_pending_seconds = Gauge(
            "pulse_relay_oldest_pending_seconds",
            "Age of the oldest event with work still pending.",
            registry=self.registry,
        )
        self.polls = Counter(
            "pulse_relay_polls",
            "Job polls made by the poller, by outcome.",
            ["outcome"],
            registry=self.registry,
        )

        self.pruned_events = Counter(
            "pulse_relay_pruned_events",
            "Finished events deleted by retention (the daily task and `prune`).",
            registry=self.registry,
        )
        self.proxy_requests = Counter(
            "pulse_relay_proxy_requests",
            "Requests to the Pulse API pass-through, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.proxy_pending_watches = Gauge(
            "pulse_relay_proxy_pending_watches",
            "Watches found by the pass-through that the store has not taken yet (retried).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "pulse_relay_config_reloads",
            "Configuration reloads on SIGHUP, by outcome.",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
