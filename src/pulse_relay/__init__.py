"""pulse-relay: verified, durable relay for Pulse webhooks."""

__version__ = "0.1.0"
