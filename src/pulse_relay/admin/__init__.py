"""The admin listener (listener.py): health, readiness, metrics, the control API, the UI,
and the Pulse pass-through (the proxy package) on its port.

Deliberately empty: the CLI and the pass-through import single modules (service,
errors, context) without building the listener or its HTTP stack.
"""
