"""What a proxied request says about itself, read while its body streams through.

The audit trail of an auto-watched job: the request's non-file fields, each
uploaded file's name, size and SHA-256, and the `X-Pulse-Relay-Meta-<Key>`
headers. The body is never held: a multipart body is parsed chunk by chunk as
it is forwarded (files are only hashed), and a JSON or urlencoded body is kept
for parsing only up to `CAPTURED_BODY_MAX_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

META_HEADER_PREFIX: Final = "x-pulse-relay-meta-"
META_HEADERS_MAX_BYTES: Final = 8192
# A JSON or urlencoded body longer than this is forwarded but its fields are not captured.
CAPTURED_BODY_MAX_BYTES: Final = 1_048_576
# A field value longer than this goes into the metadata as its size and SHA-256 only:
# the metadata travels in every envelope, and an inline schema can be large.
FIELD_MAX_BYTES: Final = 16_384

FieldValue = Any


class MetadataHeaderError(Exception):
    """A metadata header the relay refuses; `header` names it."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason


def is_metadata_header(name: str) -> bool:
    """True for an `X-Pulse-Relay-Meta-<Key>` header (any case): kept by the relay."""
    return name.lower().startswith(META_HEADER_PREFIX)


def metadata_from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The metadata headers as keys (`X-Pulse-Relay-Meta-User-Id` → `user_id`).

    Raises MetadataHeaderError naming the header that is empty-keyed, not UTF-8,
    or takes the headers past `META_HEADERS_MAX_BYTES` (names and values).
    """
    metadata: dict[str, str] = {}
    total_bytes = 0
    for name, value in headers.items():
        if not is_metadata_header(name):
            continue
        key = name[len(META_HEADER_PREFIX) :].lower().replace("-", "_")
        if not key:
            raise MetadataHeaderError(name, "the header names no key")
        try:
            total_bytes += len(name.encode("ascii")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise MetadataHeaderError(name, "the value is not UTF-8 text") from None
        if total_bytes > META_HEADERS_MAX_BYTES:
            raise MetadataHeaderError(
                name,
                f"metadata headers total more than {META_HEADERS_MAX_BYTES} bytes",
            )
        metadata[key] = f"{metadata[key]}, {value}" if key in metadata else value
    return metadata


@dataclass(frozen=True)
class CapturedFile:
    """One uploaded file: the form field, the name the client gave, size, SHA-256 (hex)."""

    field: str
    filename: str
    size_bytes: int
    sha256: str

    def document(self) -> dict[str, Any]:
        """The file as it appears in the watch metadata."""
        return {
            "field": self.field,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }


def _summary(size_bytes: int, sha256: str) -> dict[str, Any]:
    return {"size_bytes": size_bytes, "sha256": sha256}


def _json_field(value: Any) -> FieldValue:
    """A JSON field as captured: itself, or its size and hash when too long to carry."""
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) <= FIELD_MAX_BYTES:
        return value
    return _summary(len(encoded), hashlib.sha256(encoded).hexdigest())


def _add_field(fields: dict[str, FieldValue], name: str, value: FieldValue) -> None:
    """A repeated field name becomes a list of its values."""
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list):
        fields[name].append(value)
    else:
        fields[name] = [fields[name], value]


def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


@dataclass
class _Part:
    """One multipart part being read: files are hashed, fields kept up to FIELD_MAX_BYTES."""

    name: str
    filename: str | None
    content_type: str
    digest: Any = field(default_factory=hashlib.sha256)
    size_bytes: int = 0
    head: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.digest.update(data)
        self.size_bytes += len(data)
        if self.filename is None and len(self.head) <= FIELD_MAX_BYTES:
            self.head += data[: FIELD_MAX_BYTES + 1 - len(self.head)]

    def value(self) -> FieldValue:
        if self.size_bytes > FIELD_MAX_BYTES:
            return _summary(self.size_bytes, self.digest.hexdigest())
        text = bytes(self.head).decode("utf-8", errors="replace")
        if _is_json_type(self.content_type):
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text


class _MultipartReader:
    """Callbacks for python-multipart's push parser: it is fed the chunks being forwarded."""

    def __init__(self, boundary: bytes, fields: dict[str, FieldValue], files: list[CapturedFile]):
        self._fields = fields
        self._files = files
        self._headers: dict[str, bytes] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._part: _Part | None = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: self._header_name.extend(
                    data[start:end]
                ),
                "on_header_value": lambda data, start, end: self._header_value.extend(
                    data[start:end]
                ),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._headers = {}
        self._part = None

    def _header_end(self) -> None:
        name = bytes(self._header_name).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        # Raw bytes: browsers and httpx send UTF-8 file names unescaped.
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        filename = params.get(b"filename")
        content_type = self._headers.get("content-type", b"text/plain")
        self._part = _Part(
            name=params.get(b"name", b"").decode("utf-8", errors="replace"),
            filename=None if filename is None else filename.decode("utf-8", errors="replace"),
            content_type=content_type.decode("latin-1"),
        )

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            self._part.feed(data[start:end])

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if part.filename is None:
            _add_field(self._fields, part.name, part.value())
        else:
            digest = part.digest.hexdigest()
            self._files.append(CapturedFile(part.name, part.filename, part.size_bytes, digest))


class RequestCapture:
    """Reads a request body's fields and files from the chunks it is fed, never keeping files."""

    def __init__(self, content_type: str | None, content_encoding: str | None = None) -> None:
        self.fields: dict[str, FieldValue] = {}
        self.files: list[CapturedFile] = []
        self.problem: str | None = None
        self._multipart: _MultipartReader | None = None
        self._buffer: bytearray | None = None
        media, params = parse_options_header(content_type or "")
        self._media = media.decode("latin-1").lower()
        if content_encoding and content_encoding.strip().lower() != "identity":
            self.problem = f"the body is {content_encoding}-encoded; its fields were not read"
        elif self._media == "multipart/form-data" and params.get(b"boundary"):
            try:
                self._multipart = _MultipartReader(params[b"boundary"], self.fields, self.files)
            except FormParserError as error:
                self.problem = f"unreadable multipart body: {error}"
        elif self._media == "application/x-www-form-urlencoded" or _is_json_type(self._media):
            self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Read the next chunk of the body (a parse error only ends the capture)."""
        if self._multipart is not None:
            try:
                self._multipart.parser.write(chunk)
            except FormParserError as error:
                self._multipart = None
                self.problem = f"unreadable multipart body: {error}"
        elif self._buffer is not None:
            if len(self._buffer) + len(chunk) > CAPTURED_BODY_MAX_BYTES:
                self._buffer = None
                self.problem = f"the body is over {CAPTURED_BODY_MAX_BYTES} bytes; fields not read"
            else:
                self._buffer += chunk

    def finish(self) -> None:
        """The body is complete: parse a buffered JSON or urlencoded body."""
        if self._multipart is not None:
            try:
                self._multipart.parser.finalize()
            except FormParserError as error:
                self.problem = f"unreadable multipart body: {error}"
        if self._buffer is None:
            return
        body, self._buffer = bytes(self._buffer), None
        if self._media == "application/x-www-form-urlencoded":
            for name, value in parse_qsl(body.decode("utf-8", errors="replace"), True):
                _add_field(self.fields, name, _json_field(value))
            return
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            self.problem = "the body is not valid JSON"
            return
        if not isinstance(document, dict):
            self.problem = "the JSON body is not an object"
            return
        for name, value in document.items():
            self.fields[name] = _json_field(value)

    def document(self) -> dict[str, Any]:
        """The captured fields and files (and why some could not be read, if so)."""
        captured: dict[str, Any] = {
            "fields": self.fields,
            "files": [file.document() for file in self.files],
        }
        if self.problem is not None:
            captured["capture_problem"] = self.problem
        return captured
