"""pulse-relay's benchmark suite: `python -m bench all` writes BENCHMARKS.md."""
