"""Ingest path on PostgreSQL: psycopg 3 (+ psycopg_pool) against asyncpg.

Each driver inserts the same events in groups (one transaction per group,
INSERT … ON CONFLICT DO NOTHING RETURNING id), from several concurrent groups,
as the store's group commit does. Run: python -m bench.pg_drivers postgresql://…
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import asyncpg
import psycopg
from psycopg_pool import AsyncConnectionPool

GROUPS = 200
GROUP_SIZE = 32
CONCURRENCY = 8
SQL = (
    "INSERT INTO bench_events (id, body) SELECT * FROM unnest(%s::text[], %s::bytea[]) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
BODY = b'{"type": "job.completed", "data": {"job_id": "job-1"}}' * 4


def groups() -> list[list[str]]:
    return [[uuid.uuid4().hex for _ in range(GROUP_SIZE)] for _ in range(GROUPS)]


async def run_psycopg(url: str) -> float:
    async with AsyncConnectionPool(url, min_size=CONCURRENCY, max_size=CONCURRENCY) as pool:
        work = groups()
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(ids: list[str]) -> None:
            async with semaphore, pool.connection() as conn, conn.transaction():
                await (await conn.execute(SQL, (ids, [BODY] * len(ids)))).fetchall()

        started = time.perf_counter()
        await asyncio.gather(*(one(ids) for ids in work))
        return GROUPS * GROUP_SIZE / (time.perf_counter() - started)


async def run_asyncpg(url: str) -> float:
    pool = await asyncpg.create_pool(url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    sql = SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
    work = groups()
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(ids: list[str]) -> None:
        async with semaphore, pool.acquire() as conn, conn.transaction():
            await conn.fetch(sql, ids, [BODY] * len(ids))

    started = time.perf_counter()
    await asyncio.gather(*(one(ids) for ids in work))
    await pool.close()
    return GROUPS * GROUP_SIZE / (time.perf_counter() - started)


async def main(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_events")
        await conn.execute("CREATE TABLE bench_events (id TEXT PRIMARY KEY, body BYTEA)")
    for name, run in (("psycopg3+pool", run_psycopg), ("asyncpg", run_asyncpg)) * 2:
        print(f"{name}: {await run(url):,.0f} events/s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
