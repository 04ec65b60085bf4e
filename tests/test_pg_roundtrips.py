"""The benchmarks' round-trip counter (bench/pg_roundtrips.py) against a real server."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg

from bench.pg_roundtrips import CountingProxy


def test_each_awaited_statement_is_a_round_trip_and_a_pipeline_is_one(postgres_url: str) -> None:
    port = urlsplit(postgres_url).port
    assert port is not None
    with CountingProxy(port) as proxy, psycopg.connect(proxy.url(postgres_url)) as conn:
        conn.autocommit = True
        proxy.reset()
        conn.execute("SELECT 1")
        assert proxy.reset() == 1
        for _ in range(3):
            conn.execute("SELECT 1")
        assert proxy.reset() == 3
        with conn.transaction():
            conn.execute("SELECT 1")
        assert proxy.reset() == 3  # BEGIN, the statement, COMMIT
        with conn.pipeline():
            for _ in range(3):
                conn.execute("SELECT 1")
        assert proxy.reset() == 1
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_notifications_the_server_sends_unasked_begin_no_round_trip(postgres_url: str) -> None:
    port = urlsplit(postgres_url).port
    assert port is not None
    with (
        CountingProxy(port) as proxy,
        psycopg.connect(proxy.url(postgres_url), autocommit=True) as listener,
        psycopg.connect(postgres_url, autocommit=True) as sender,
    ):
        listener.execute("LISTEN bench_roundtrips")
        proxy.reset()
        for _ in range(3):
            sender.execute("NOTIFY bench_roundtrips")
        received = list(listener.notifies(timeout=5, stop_after=3))
        assert len(received) == 3
        assert proxy.reset() == 0
