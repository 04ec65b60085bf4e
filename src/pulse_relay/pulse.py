"""The Pulse API client: `GET /job/{id}`, large-result downloads, error classification.

Every failure is one of a small hierarchy of `PulseError`s carrying the status
code and any `Retry-After`; `judge_error` is the one policy that turns one into
retry / slow retry / give up, for the dispatcher's fetches and the poller alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from pulse_relay.redaction import REDACTED
from pulse_relay.retry import is_retryable_status, parse_retry_after
from pulse_relay.unencodable import without_lone_surrogates

API_KEY_HEADER: Final = "x-api-key"
DEFAULT_MAX_RESULT_BYTES: Final = 256 * 1024 * 1024
MAX_REASON_CHARS: Final = 200
# A wrong API key is a configuration error: keep the work, retry slowly, never drop it.
AUTH_RETRY_SECONDS: Final = 300.0
# A job may not be visible yet right after its webhook; a few 404s are tolerated.
NOT_FOUND_MAX_ATTEMPTS: Final = 5

# Enough of an error body to find its message; the rest is never read.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
_MAX_REDIRECTS: Final = 5
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES: Final = 64 * 1024


# eq=False keeps exceptions hashable (identity), as tracebacks and loggers expect.
@dataclass(eq=False)
class PulseError(Exception):
    """A failed Pulse API call; `reason` is short, single-line and never holds the API key."""

    reason: str
    status_code: int | None = None
    retry_after_seconds: float | None = None

    def __str__(self) -> str:
        return self.reason


class PulseRetryableError(PulseError):
    """Transient: 408, 425, 429, 5xx, timeouts, connection errors, truncated JSON; retried."""


class PulseAuthError(PulseError):
    """401/403: the API key is wrong; a configuration error, retried on the slow schedule."""


class PulseNotFoundError(PulseError):
    """404: the job is unknown (perhaps not yet visible); retried a few times, then dead."""


class PulsePermanentError(PulseError):
    """Can never succeed as asked: other 4xx, a body that is not a JSON object, too large."""


@dataclass(frozen=True)
class ErrorVerdict:
    """What a failed Pulse API call means for the work that made it: give up, or retry when."""

    outcome: Literal["retry", "not_found", "auth_error", "dead"]
    retry_after_seconds: float | None = None

    @property
    def gives_up(self) -> bool:
        """True when the work is dead: no further call can succeed."""
        return self.outcome == "dead"

    def delay_seconds(self, backoff_seconds: float) -> float:
        """Seconds until the next call: the caller's backoff, never before `Retry-After`.

        A rejected API key waits on the slow schedule instead of the caller's backoff.
        """
        if self.outcome == "auth_error":
            backoff_seconds = AUTH_RETRY_SECONDS
        return max(backoff_seconds, self.retry_after_seconds or 0.0)


def judge_error(error: PulseError, *, attempt: int) -> ErrorVerdict:
    """Retry, retry slowly or give up after failed call number `attempt` (1-based).

    Transient errors are retried for as long as it takes, a rejected API key
    slowly and forever, a 404 up to NOT_FOUND_MAX_ATTEMPTS calls; a permanent
    error gives up at once.
    """
    if isinstance(error, PulseAuthError):
        return ErrorVerdict("auth_error", error.retry_after_seconds)
    if isinstance(error, PulsePermanentError) or (
        isinstance(error, PulseNotFoundError) and attempt >= NOT_FOUND_MAX_ATTEMPTS
    ):
        return ErrorVerdict("dead")
    outcome: Literal["retry", "not_found"] = (
        "not_found" if isinstance(error, PulseNotFoundError) else "retry"
    )
    return ErrorVerdict(outcome, error.retry_after_seconds)


@dataclass
class FetchedJob:
    """A job as `GET /job` returned it, with a large result downloaded in place of its pointer."""

    job: dict[str, Any]
    result_url: str | None


@dataclass
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    sent_key: bool


class _ResultGone(Exception):
    """The large-result URL no longer serves the document (single-use or expired)."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class PulseClient:
    """Reads jobs from the Pulse API; owns its HTTP session unless one is given."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_seconds: float = 30,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        download_timeout_seconds: float = 600,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base_url = URL(base_url.rstrip("/"))
        if self._base_url.scheme not in ("http", "https") or not self._base_url.host:
            raise ValueError(f"base URL must be an absolute http(s) URL, got {base_url!r}")
        self._origin = _origin(self._base_url)
        self._api_key = api_key
        self._max_result_bytes = max_result_bytes
        self._job_timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        # A result of hundreds of MiB may legitimately take longer than one API
        # call, so the download is bounded per read plus a generous total.
        self._download_timeout = aiohttp.ClientTimeout(
            total=download_timeout_seconds,
            sock_connect=timeout_seconds,
            sock_read=timeout_seconds,
        )
        self._session = session
        self._owns_session = session is None

    @property
    def base_url(self) -> str:
        """The API base URL, without a trailing slash."""
        return str(self._base_url)

    async def __aenter__(self) -> PulseClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it; safe to call twice."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use so the client can be built outside a running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """`GET /job/{job_id}` as a JSON object; raises a `PulseError` subclass on any failure."""
        url = URL(f"{self._base_url}/job/{quote(job_id, safe='')}", encoded=True)
        what = "GET /job"
        answer = await self._get(url, what=what, limits=self._job_timeout)
        if not 200 <= answer.status < 300:
            raise self._status_error(what, answer)
        return self._json_object(what, answer.body)

    async def fetch_job(self, job_id: str) -> FetchedJob:
        """The job with a large result (`is_url`) downloaded in place; one refresh on 410."""
        job = await self.get_job(job_id)
        pointer = self._result_pointer(job)
        if pointer is None:
            return FetchedJob(job=job, result_url=None)
        try:
            document = await self._download(pointer)
        except _ResultGone:
            # Result URLs may be single-use or expire: a fresh GET /job hands
            # out a new one. A second refusal means something else is wrong.
            job = await self.get_job(job_id)
            pointer = self._result_pointer(job)
            if pointer is None:
                return FetchedJob(job=job, result_url=None)
            try:
                document = await self._download(pointer)
            except _ResultGone as gone:
                raise PulseRetryableError(
                    f"result download: HTTP {gone.answer.status} again after a fresh pointer",
                    status_code=gone.answer.status,
                    retry_after_seconds=_retry_after(gone.answer.headers),
                ) from None
        job["result"] = document
        return FetchedJob(job=job, result_url=str(pointer))

    def _result_pointer(self, job: dict[str, Any]) -> URL | None:
        result = job.get("result")
        if not isinstance(result, dict) or result.get("is_url") is not True:
            return None
        raw = result.get("url")
        if not isinstance(raw, str) or not raw:
            raise PulsePermanentError("job result has is_url but no usable url")
        try:
            url = self._base_url.join(URL(raw))
        except ValueError:
            raise PulsePermanentError("job result url is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise PulsePermanentError("job result url is not an http(s) URL")
        return url

    async def _download(self, url: URL) -> dict[str, Any]:
        what = "result download"
        answer = await self._get(url, what=what, limits=self._download_timeout)
        if 200 <= answer.status < 300:
            return self._json_object(what, answer.body)
        if answer.status in (404, 410) or (answer.status in (401, 403) and not answer.sent_key):
            # A 403 from a host that never saw our key is an expired presigned
            # URL, not a configuration error: a fresh pointer fixes it.
            raise _ResultGone(answer)
        raise self._status_error(what, answer)

    async def _get(self, url: URL, *, what: str, limits: aiohttp.ClientTimeout) -> _Answer:
        """GET following redirects by hand, so the key never travels to another origin."""
        session = self._http()
        for _ in range(_MAX_REDIRECTS + 1):
            sent_key = _origin(url) == self._origin
            headers = {"accept": "application/json"}
            if sent_key:
                headers[API_KEY_HEADER] = self._api_key
            try:
                async with session.get(
                    url, headers=headers, timeout=limits, allow_redirects=False
                ) as response:
                    if response.status in _REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise PulsePermanentError(
                                f"{what}: HTTP {response.status} without Location",
                                status_code=response.status,
                            )
                        next_url = url.join(URL(location))
                        if next_url.scheme not in ("http", "https"):
                            raise PulsePermanentError(
                                f"{what}: redirect to a non-http(s) URL",
                                status_code=response.status,
                            )
                        url = next_url
                        continue
                    is_success = 200 <= response.status < 300
                    limit = self._max_result_bytes if is_success else _MAX_ERROR_BODY_BYTES
                    body = await self._read(response, what=what, limit=limit, strict=is_success)
                    return _Answer(response.status, response.headers, body, sent_key)
            except PulseError:
                raise
            except TimeoutError:
                raise PulseRetryableError(f"{what}: timed out") from None
            except aiohttp.InvalidURL:
                raise PulsePermanentError(f"{what}: invalid URL") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise PulseRetryableError(
                    self._clean(f"{what}: {type(exc).__name__}: {exc}")
                ) from None
        raise PulsePermanentError(f"{what}: more than {_MAX_REDIRECTS} redirects")

    async def _read(
        self, response: aiohttp.ClientResponse, *, what: str, limit: int, strict: bool
    ) -> bytes:
        """The body up to `limit` bytes: past it, an error if `strict`, else cut short."""
        if strict and response.content_length is not None and response.content_length > limit:
            raise PulsePermanentError(
                f"{what}: {response.content_length} bytes exceeds the {limit}-byte limit",
                status_code=response.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                if strict:
                    raise PulsePermanentError(
                        f"{what}: body exceeds the {limit}-byte limit",
                        status_code=response.status,
                    )
                chunks.append(chunk[: limit - (size - len(chunk))])
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _json_object(self, what: str, body: bytes) -> dict[str, Any]:
        try:
            document = json.loads(body)
        except RecursionError:
            raise PulsePermanentError(f"{what}: JSON nested too deeply") from None
        except ValueError:
            # A 2xx with a body that does not parse is almost always a
            # connection cut mid-answer; the next attempt usually succeeds.
            raise PulseRetryableError(f"{what}: invalid or truncated JSON") from None
        if not isinstance(document, dict):
            raise PulsePermanentError(f"{what}: response is not a JSON object")
        return document

    def _status_error(self, what: str, answer: _Answer) -> PulseError:
        status = answer.status
        detail = _error_detail(answer.body)
        reason = self._clean(f"{what}: HTTP {status}" + (f": {detail}" if detail else ""))
        retry_after_seconds = _retry_after(answer.headers)
        if status in (401, 403):
            return PulseAuthError(reason, status, retry_after_seconds)
        if status == 404:
            return PulseNotFoundError(reason, status, retry_after_seconds)
        if is_retryable_status(status):
            return PulseRetryableError(reason, status, retry_after_seconds)
        return PulsePermanentError(reason, status, retry_after_seconds)

    def _clean(self, text: str) -> str:
        """One short line with the API key masked, fit for logs and the store."""
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        # An error body's `"\ud800"` escapes would make the reason unwritable.
        text = " ".join(without_lone_surrogates(text).split())
        if len(text) > MAX_REASON_CHARS:
            text = text[: MAX_REASON_CHARS - 3] + "..."
        return text


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    """Scheme, host and effective port: the key goes only where all three match the API's."""
    return (url.scheme, url.host, url.port)


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    return parse_retry_after(headers.get("retry-after"))


def _error_detail(body: bytes) -> str:
    """The message of an error body: a JSON `error`/`message`/`detail` field, else its text."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if isinstance(document, dict):
        for key in ("error", "message", "detail"):
            value = document.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                nested = value.get("message")
                if isinstance(nested, str) and nested:
                    return nested
    return text
