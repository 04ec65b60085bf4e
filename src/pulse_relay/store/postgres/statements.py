"""The work queue's statements on PostgreSQL, each one round trip in autocommit.

A statement is atomic on its own, so an operation of several writes (finish, log
the attempt, claim what it made due) is one statement of data-modifying CTEs: it
needs neither BEGIN nor COMMIT, and waits for the server once. Every finish
matches the lease token, so a late relay's finish changes nothing. NOTIFY is a
`pg_notify` inside the statement, sent when it commits, and only where another
relay may have work to take; its payload names the relay that sent it.
"""

from __future__ import annotations

from typing import Any

from pulse_relay.store import rows
from pulse_relay.store.model import Attempt

# Parameters are cast: in INSERT … SELECT an untyped NULL would be text.
_ATTEMPT_ROW = (
    "%(a_sink)s::text, %(a_attempt)s::int, %(a_started_at)s::float8, "
    "%(a_duration_ms)s::float8, %(a_outcome)s::text, %(a_status_code)s::int, "
    "%(a_error)s::text, %(a_output_tail)s::text, %(a_edited_envelope)s::text"
)
_LOG_ATTEMPT = (
    "INSERT INTO attempts (event_id, sink, attempt, started_at, duration_ms, outcome, "
    "status_code, error, output_tail, edited_envelope) "
)
# The columns of rows.delivery_task, from a claimed delivery `d`-like relation and its
# event `e`-like one, then the job's watch metadata `w`.
_TASK_COLUMNS = (
    "{d}.event_id, {d}.sink, {d}.attempts, {d}.replay, {e}.type, {e}.job_id, {e}.received_at, "
    "{e}.source, {e}.body, {e}.job, {e}.result_url, CAST(w.metadata AS TEXT), "
    "{d}.edited_envelope"
)
# How many they are: a claim's rows carry more columns after them.
TASK_WIDTH = 13


_ATTEMPT_NAMES = (
    "sink",
    "attempt",
    "started_at",
    "duration_ms",
    "outcome",
    "status_code",
    "error",
    "output_tail",
    "edited_envelope",
)


def attempt_params(attempt: Attempt) -> dict[str, Any]:
    """The named parameters of the attempt row the statements below log."""
    _, *values = rows.attempt_values("", attempt)
    return {f"a_{name}": value for name, value in zip(_ATTEMPT_NAMES, values, strict=True)}


CLAIM_FETCHES = (
    "WITH due AS (SELECT id FROM events WHERE fetch_state = 'pending' AND next_fetch_at <= %s "
    "AND (fetch_lease_until IS NULL OR fetch_lease_until <= %s) "
    "ORDER BY next_fetch_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE events e SET fetch_lease_until = %s, fetch_token = %s FROM due WHERE e.id = due.id "
    "RETURNING e.id, e.job_id, e.type, e.fetch_attempts"
)
# Each sink's due deliveries up to its free slots, sinks in the order given, at most
# `total` in all; returned with their events, in that order.
CLAIM_DELIVERIES = (
    "WITH due AS (SELECT x.event_id, x.sink, s.n, x.next_attempt_at "
    "FROM unnest(%(sinks)s::text[], %(slots)s::int[]) WITH ORDINALITY AS s(sink, slots, n) "
    "CROSS JOIN LATERAL (SELECT d.event_id, d.sink, d.next_attempt_at FROM deliveries d "
    "JOIN events e ON e.id = d.event_id WHERE d.sink = s.sink AND d.state = 'pending' "
    "AND d.next_attempt_at <= %(now)s AND (d.lease_until IS NULL OR d.lease_until <= %(now)s) "
    "AND e.fetch_state IN ('none', 'done') ORDER BY d.next_attempt_at LIMIT s.slots "
    "FOR UPDATE OF d SKIP LOCKED) AS x ORDER BY s.n, x.next_attempt_at LIMIT %(total)s), "
    "claimed AS (UPDATE deliveries d SET lease_until = %(until)s, lease_token = %(token)s "
    "FROM due JOIN events e ON e.id = due.event_id LEFT JOIN watches w ON w.job_id = e.job_id "
    "WHERE d.event_id = due.event_id AND d.sink = due.sink RETURNING "
    + _TASK_COLUMNS.format(d="d", e="e")
    + ", due.n, due.next_attempt_at) "
    "SELECT * FROM claimed ORDER BY n, next_attempt_at"
)
# The fetch is done (if the token is still ours), its attempt logged, its pending
# deliveries due now; those of the sinks given (in order, at most `total`) are leased
# to this relay and returned with the event as it now is. One row with NULL delivery
# columns when none is; no row when the fetch was not ours. NOTIFY only if a delivery
# is left for whichever relay has a slot.
FINISH_FETCH = (
    "WITH f AS (UPDATE events SET fetch_state = 'done', job = %(job)s, result_url = %(url)s, "
    "fetched_at = %(now)s, fetch_lease_until = NULL, fetch_token = NULL, fetch_error = NULL, "
    "fetch_attempts = fetch_attempts + 1 "
    "WHERE id = %(id)s AND (%(token)s::text IS NULL OR fetch_token = %(token)s) "
    "RETURNING id, type, job_id, received_at, source, body, job, result_url), "
    "logged AS (" + _LOG_ATTEMPT + "SELECT f.id, " + _ATTEMPT_ROW + " FROM f), "
    "picked AS (SELECT d.sink FROM deliveries d JOIN f ON f.id = d.event_id "
    "JOIN unnest(%(sinks)s::text[]) WITH ORDINALITY AS s(sink, n) ON s.sink = d.sink "
    "WHERE d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= %(now)s) "
    "ORDER BY s.n LIMIT %(total)s), "
    "due AS (UPDATE deliveries d SET next_attempt_at = %(now)s, "
    "lease_until = CASE WHEN d.sink IN (SELECT sink FROM picked) THEN %(until)s "
    "ELSE d.lease_until END, "
    "lease_token = CASE WHEN d.sink IN (SELECT sink FROM picked) THEN %(claim)s "
    "ELSE d.lease_token END "
    "FROM f WHERE d.event_id = f.id AND d.state = 'pending' "
    "RETURNING d.*, d.lease_token IS NOT DISTINCT FROM %(claim)s AS mine), "
    "woken AS MATERIALIZED (SELECT pg_notify(%(channel)s, %(relay)s) "
    "FROM (SELECT FROM due WHERE NOT due.mine LIMIT 1) AS one) "
    "SELECT " + _TASK_COLUMNS.format(d="due", e="f") + ", n.notified "
    "FROM f LEFT JOIN due ON due.mine LEFT JOIN watches w ON w.job_id = f.job_id "
    "CROSS JOIN (SELECT count(*) AS notified FROM woken) AS n"
)
RETRY_FETCH = (
    "WITH f AS (UPDATE events SET next_fetch_at = %(next)s, fetch_lease_until = NULL, "
    "fetch_token = NULL, fetch_error = %(a_error)s, fetch_attempts = fetch_attempts + 1 "
    "WHERE id = %(id)s AND (%(token)s::text IS NULL OR fetch_token = %(token)s) RETURNING id) "
    + _LOG_ATTEMPT
    + "SELECT f.id, "
    + _ATTEMPT_ROW
    + " FROM f"
)
FAIL_FETCH = (
    "WITH f AS (UPDATE events SET fetch_state = 'dead', fetch_lease_until = NULL, "
    "fetch_token = NULL, fetch_error = %(a_error)s, fetch_attempts = fetch_attempts + 1 "
    "WHERE id = %(id)s AND (%(token)s::text IS NULL OR fetch_token = %(token)s) RETURNING id), "
    "dead AS (UPDATE deliveries d SET state = 'dead', last_error = %(reason)s, "
    "lease_until = NULL, lease_token = NULL, updated_at = %(now)s "
    "FROM f WHERE d.event_id = f.id AND d.state = 'pending') "
    + _LOG_ATTEMPT
    + "SELECT f.id, "
    + _ATTEMPT_ROW
    + " FROM f"
)
# Deliveries finished together (see finishes.py): a column per parameter, a row of
# `t` per delivery. The pairs moved are returned; a delivery another relay took over
# is left as it is, and so is its attempt.
FINISH_DELIVERIES = (
    "WITH t AS (SELECT * FROM unnest(%(ids)s::text[], %(sinks)s::text[], %(tokens)s::text[], "
    "%(states)s::text[], %(errors)s::text[], %(nexts)s::float8[], %(a_sink)s::text[], "
    "%(a_attempt)s::int[], %(a_started_at)s::float8[], %(a_duration_ms)s::float8[], "
    "%(a_outcome)s::text[], %(a_status_code)s::int[], %(a_error)s::text[], "
    "%(a_output_tail)s::text[], %(a_edited_envelope)s::text[]) "
    "AS t(id, sink, token, state, error, next, a_sink, a_attempt, a_started_at, a_duration_ms, "
    "a_outcome, a_status_code, a_error, a_output_tail, a_edited_envelope)), "
    "moved AS (UPDATE deliveries d SET state = t.state, attempts = d.attempts + 1, "
    "lease_until = NULL, lease_token = NULL, last_error = t.error, "
    "next_attempt_at = COALESCE(t.next, d.next_attempt_at), updated_at = %(now)s FROM t "
    "WHERE d.event_id = t.id AND d.sink = t.sink "
    "AND (t.token IS NULL OR d.lease_token = t.token) RETURNING d.event_id, d.sink), "
    "logged AS ("
    + _LOG_ATTEMPT
    + "SELECT t.id, t.a_sink, t.a_attempt, t.a_started_at, t.a_duration_ms, t.a_outcome, "
    "t.a_status_code, t.a_error, t.a_output_tail, t.a_edited_envelope "
    "FROM t JOIN moved ON moved.event_id = t.id AND moved.sink = t.sink) "
    "SELECT event_id, sink FROM moved"
)

RENEW_LEASES = (
    "WITH fetches AS (UPDATE events SET fetch_lease_until = %(until)s "
    "FROM unnest(%(fetch_ids)s::text[], %(fetch_tokens)s::text[]) AS t(i, k) "
    "WHERE id = t.i AND fetch_token = t.k), "
    "deliveries AS (UPDATE deliveries SET lease_until = %(until)s "
    "FROM unnest(%(event_ids)s::text[], %(sinks)s::text[], %(tokens)s::text[]) AS t(e, s, k) "
    "WHERE event_id = t.e AND sink = t.s AND lease_token = t.k) "
    "SELECT"
)
RELEASE_LEASES = (
    "WITH deliveries AS (UPDATE deliveries SET lease_until = NULL, lease_token = NULL "
    "WHERE lease_token LIKE %(mine)s), "
    "fetches AS (UPDATE events SET fetch_lease_until = NULL, fetch_token = NULL "
    "WHERE fetch_token LIKE %(mine)s) "
    "SELECT pg_notify(%(channel)s, %(relay)s)"
)
