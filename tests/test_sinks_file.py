"""The file sink against real files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from string import Formatter
from typing import Any

import pytest
from pydantic import ValidationError

from bench.chaos.at_rest import racing
from pulse_relay.config import FileSinkSettings
from pulse_relay.config.types import FilenameTemplate, TemplatePiece
from pulse_relay.sinks import (
    FileSink,
    PermanentSinkError,
    RetryableSinkError,
    build_sink,
)
from pulse_relay.sinks.file import encode_field_value
from tests.helpers import make_delivery, wait_for


def make_sink(directory: Path, **options: Any) -> FileSink:
    return FileSink(FileSinkSettings(type="file", name="files", directory=directory, **options))


def unchecked_template(text: str) -> FilenameTemplate:
    """A filename template that skipped its checks: the sink must still keep inside."""
    pieces = tuple(
        TemplatePiece(literal, field)
        for literal, field, _spec, _conversion in Formatter().parse(text)
    )
    return FilenameTemplate(text, pieces)


def make_unvalidated_sink(directory: Path, filename: str) -> FileSink:
    """A sink from settings that skipped config validation: the sink must defend itself."""
    settings = FileSinkSettings.model_construct(
        type="file", name="files", directory=directory, filename=unchecked_template(filename)
    )
    return FileSink(settings)


def all_files(directory: Path) -> list[str]:
    return sorted(
        str(path.relative_to(directory)) for path in directory.rglob("*") if not path.is_dir()
    )


async def test_json_writes_the_body_under_the_job_id(tmp_path: Path) -> None:
    directory = tmp_path / "out"  # created on first delivery
    sink = make_sink(directory)
    delivery = make_delivery(job_id="job-42")
    result = await sink.deliver(delivery)
    assert (directory / "job-42.json").read_bytes() == delivery.body
    assert str(directory / "job-42.json") in result.detail
    # The temporary file was renamed into place: nothing else is left.
    assert all_files(directory) == ["job-42.json"]


async def test_event_without_job_id_uses_the_event_id(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    delivery = make_delivery(event_id="msg_credits", event_type="credits.low_balance", job_id=None)
    await sink.deliver(delivery)
    assert all_files(tmp_path) == ["msg_credits.json"]
    assert (tmp_path / "msg_credits.json").read_bytes() == delivery.body


async def test_template_fields_are_rendered(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, filename="{date}/{type}-{job_id}-{id}.json")
    # 23:30 at UTC-02:00 is already the next day in UTC.
    delivery = make_delivery(received_at="2026-11-23T23:30:00-02:00")
    await sink.deliver(delivery)
    expected = "2026-11-24/job.completed-job-1-msg_1.json"
    assert all_files(tmp_path) == [expected]
    assert (tmp_path / expected).read_bytes() == delivery.body


async def test_template_without_job_id_field_keeps_its_shape(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, filename="{type}/{id}.json")
    await sink.deliver(
        make_delivery(event_id="msg_9", event_type="credits.low_balance", job_id=None)
    )
    assert all_files(tmp_path) == ["credits.low_balance/msg_9.json"]


async def test_later_event_for_the_same_job_replaces_the_file(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    first = make_delivery(event_id="msg_a", event_type="job.processing")
    later = make_delivery(event_id="msg_b", extra={"result": "x" * 1000})
    await sink.deliver(first)
    await sink.deliver(later)
    assert (tmp_path / "job-1.json").read_bytes() == later.body
    assert all_files(tmp_path) == ["job-1.json"]


async def test_an_older_event_delivered_last_does_not_replace_a_newer_file(
    tmp_path: Path,
) -> None:
    sink = make_sink(tmp_path)
    processing = make_delivery(
        event_id="msg_a", event_type="job.processing", received_at="2026-11-23T10:30:00.000001Z"
    )
    completed = make_delivery(event_id="msg_b", received_at="2026-11-23T10:30:00.000002Z")
    await sink.deliver(completed)
    # The processing event's retry finally succeeds after the completed one was written.
    result = await sink.deliver(processing)
    assert (tmp_path / "job-1.json").read_bytes() == completed.body
    assert "later event" in result.detail
    # The same event delivered again (a replay) is written again.
    replayed = make_delivery(
        event_id="msg_b", received_at="2026-11-23T10:30:00.000002Z", extra={"replayed": True}
    )
    await sink.deliver(replayed)
    assert (tmp_path / "job-1.json").read_bytes() == replayed.body
    assert all_files(tmp_path) == ["job-1.json"]


async def test_jsonl_appends_one_envelope_per_line(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, format="jsonl")
    deliveries = [make_delivery(event_id=f"msg_{n}", job_id=f"job-{n}") for n in range(3)]
    for delivery in deliveries:
        await sink.deliver(delivery)
    assert all_files(tmp_path) == ["events.jsonl"]
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert lines == [delivery.body for delivery in deliveries]


async def test_jsonl_keeps_a_pretty_printed_body_on_one_line(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, format="jsonl", filename="{date}.jsonl")
    delivery = make_delivery(indent=2)
    assert b"\n" in delivery.body
    await sink.deliver(delivery)
    lines = (tmp_path / "2026-11-23.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == delivery.envelope


async def test_jsonl_starts_a_fresh_line_after_a_torn_one(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(b'{"torn": ')
    sink = make_sink(tmp_path, format="jsonl")
    delivery = make_delivery()
    await sink.deliver(delivery)
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == [b'{"torn": ', delivery.body]


async def test_concurrent_jsonl_appends_give_whole_lines(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, format="jsonl")
    # Large bodies, so an unserialised append would be split across writes.
    deliveries = [
        make_delivery(event_id=f"msg_{n}", job_id=f"job-{n}", extra={"pad": str(n) * 200_000})
        for n in range(20)
    ]
    await asyncio.gather(*(sink.deliver(delivery) for delivery in deliveries))
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(delivery.body for delivery in deliveries)


async def test_concurrent_jsonl_appends_from_two_sinks_give_whole_lines(tmp_path: Path) -> None:
    # Two sinks (think: two processes) share the file; only the file lock orders them.
    first, second = make_sink(tmp_path, format="jsonl"), make_sink(tmp_path, format="jsonl")
    deliveries = [
        make_delivery(event_id=f"msg_{n}", extra={"pad": str(n) * 200_000}) for n in range(16)
    ]
    await asyncio.gather(
        *((first if n % 2 else second).deliver(d) for n, d in enumerate(deliveries))
    )
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(delivery.body for delivery in deliveries)


async def test_jsonl_waits_for_another_writers_lock(tmp_path: Path) -> None:
    # Another process appending to the same file holds its flock mid-line; the
    # sink must wait for it and then start on a fresh line.
    path = tmp_path / "events.jsonl"
    with path.open("ab") as other_writer:
        fcntl.flock(other_writer, fcntl.LOCK_EX)
        sink = make_sink(tmp_path, format="jsonl")
        delivery = make_delivery()
        task = asyncio.create_task(sink.deliver(delivery))
        inode = f":{path.stat().st_ino} "
        await wait_for(
            lambda: any(
                "->" in line and "FLOCK" in line and inode in line
                for line in Path("/proc/locks").read_text().splitlines()
            )
        )
        assert path.read_bytes() == b""
        other_writer.write(b'{"from": "another process"')
        other_writer.flush()
        fcntl.flock(other_writer, fcntl.LOCK_UN)
        await task
    assert path.read_bytes().splitlines() == [b'{"from": "another process"', delivery.body]


@pytest.mark.parametrize(
    "filename",
    ["../{job_id}.json", "sub/../../{job_id}.json", "/tmp/{job_id}.json", "{date}/../.."],
)
async def test_template_leaving_the_directory_is_refused(tmp_path: Path, filename: str) -> None:
    directory = tmp_path / "out"
    with pytest.raises(ValidationError, match=r'filename\n.*(relative|"\.\." components)'):
        make_sink(directory, filename=filename)
    # And if such a template got past the settings, the sink writes nothing outside.
    sink = make_unvalidated_sink(directory, filename=filename)
    with pytest.raises(PermanentSinkError, match=r"directory|absolute|'\.\.'"):
        await sink.deliver(make_delivery())
    assert all_files(tmp_path) == []


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("../../escape", "..%2F..%2Fescape.json"),
        ("..", "%2E%2E.json"),
        ("a/b\x00c", "a%2Fb%00c.json"),
        ("/etc/passwd", "%2Fetc%2Fpasswd.json"),
        ("50%", "50%25.json"),
    ],
)
async def test_unsafe_characters_in_values_never_make_paths(
    tmp_path: Path, job_id: str, expected: str
) -> None:
    directory = tmp_path / "out"
    sink = make_sink(directory)
    await sink.deliver(make_delivery(job_id=job_id))
    assert all_files(tmp_path) == [f"out/{expected}"]


async def test_dot_dot_value_as_a_whole_component_stays_inside(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    sink = make_sink(directory, filename="{type}/{id}.json")
    await sink.deliver(make_delivery(event_id="msg_1", event_type=".."))
    assert all_files(tmp_path) == ["out/%2E%2E/msg_1.json"]


def test_encoding_is_one_to_one() -> None:
    values = ["a/b", "a%2Fb", "a_b", "a%b", ".", "..", "...", "%2E", "é", ""]
    encoded = [encode_field_value(value) for value in values]
    assert len(set(encoded)) == len(values)
    assert all("/" not in item and "\x00" not in item for item in encoded)


async def test_symlinked_subdirectory_pointing_out_is_refused(tmp_path: Path) -> None:
    directory, outside = tmp_path / "out", tmp_path / "elsewhere"
    directory.mkdir()
    outside.mkdir()
    (directory / "link").symlink_to(outside)
    sink = make_sink(directory, filename="link/{job_id}.json")
    with pytest.raises(PermanentSinkError, match="'link' is a symbolic link"):
        await sink.deliver(make_delivery())
    assert list(outside.iterdir()) == []


async def test_symlinked_file_pointing_out_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (directory / "job-1.json").symlink_to(victim)
    for file_format, filename in (("json", "{job_id}.json"), ("jsonl", "{job_id}.json")):
        sink = make_sink(directory, format=file_format, filename=filename)
        with pytest.raises(PermanentSinkError, match=r"'job-1\.json' is a symbolic link"):
            await sink.deliver(make_delivery())
    assert victim.read_text() == "untouched"


async def test_only_the_configured_directory_may_be_reached_through_a_symlink(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    (real / "2026").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(real)  # the configured directory is itself a link
    (real / "current").symlink_to(real / "2026")
    delivery = make_delivery()
    await make_sink(tmp_path / "linked", filename="{job_id}.json").deliver(delivery)
    assert (real / "job-1.json").read_bytes() == delivery.body
    # A link below it is refused even when it points inside.
    with pytest.raises(PermanentSinkError, match="'current' is a symbolic link"):
        await make_sink(tmp_path / "linked", filename="current/{job_id}.json").deliver(delivery)
    assert list((real / "2026").iterdir()) == []


async def test_io_errors_are_retryable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    sink = make_sink(blocker)
    with pytest.raises(RetryableSinkError, match="cannot write"):
        await sink.deliver(make_delivery())


async def test_overlong_file_name_goes_dead(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, filename="{id}.json")
    with pytest.raises(PermanentSinkError, match="cannot write"):
        await sink.deliver(make_delivery(event_id="m" * 300))
    assert all_files(tmp_path) == []


def test_unknown_or_fancy_template_fields_are_refused(tmp_path: Path) -> None:
    for filename in ("{job}.json", "{id.__class__}.json", "{id!r}.json", "{id:>9}.json", "{"):
        with pytest.raises(ValidationError, match=r"filename\n.*(unknown template field|template)"):
            make_sink(tmp_path, filename=filename)


async def test_build_sink(tmp_path: Path) -> None:
    settings = FileSinkSettings(
        type="file", name="files", directory=tmp_path, events=["job.completed", "credits.*"]
    )
    sink = build_sink(settings)
    assert isinstance(sink, FileSink)
    assert sink.name == "files"
    await sink.close()


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets group and others read: what the sink must not rely on."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
@pytest.mark.parametrize("file_format", ["json", "jsonl"])
async def test_files_get_exactly_the_default_mode_whatever_the_umask(
    tmp_path: Path, file_format: str
) -> None:
    directory = tmp_path / "new" / "out"
    sink = make_sink(directory, format=file_format, filename="{date}/{job_id}.json")
    await sink.deliver(make_delivery())
    (written,) = directory.rglob("job-1.json")
    assert file_mode(written) == 0o600
    # The directories the sink created (not the parents of the configured one).
    assert file_mode(directory) == 0o700
    assert file_mode(written.parent) == 0o700


@pytest.mark.parametrize("file_format", ["json", "jsonl"])
async def test_files_get_exactly_the_configured_mode(tmp_path: Path, file_format: str) -> None:
    previous = os.umask(0o077)  # stricter than the mode asked for
    try:
        sink = make_sink(tmp_path / "out", format=file_format, mode="0640", filename="a/b.json")
        await sink.deliver(make_delivery())
    finally:
        os.umask(previous)
    assert file_mode(tmp_path / "out" / "a" / "b.json") == 0o640
    # Group members who may read the files can reach them.
    assert file_mode(tmp_path / "out" / "a") == 0o750
    assert file_mode(tmp_path / "out") == 0o750


async def test_an_existing_jsonl_file_is_brought_to_the_configured_mode(tmp_path: Path) -> None:
    existing = tmp_path / "events.jsonl"
    existing.write_text("")
    existing.chmod(0o666)
    await make_sink(tmp_path, format="jsonl").deliver(make_delivery())
    assert file_mode(existing) == 0o600
    assert existing.read_bytes().count(b"\n") == 1


@pytest.mark.parametrize("mode", ["600", "0644", "0o600", "0400", "rw-------", "10600", ""])
def test_mode_must_be_octal_text_that_lets_the_owner_write(tmp_path: Path, mode: str) -> None:
    if mode in ("600", "0644"):
        assert make_sink(tmp_path, mode=mode)
        return
    with pytest.raises(ValidationError, match="mode"):
        make_sink(tmp_path, mode=mode)


@pytest.mark.parametrize("file_format", ["json", "jsonl"])
async def test_a_hard_linked_target_is_refused_and_left_alone(
    tmp_path: Path, file_format: str
) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    os.link(victim, directory / "job-1.json")
    sink = make_sink(directory, format=file_format, filename="{job_id}.json")
    with pytest.raises(PermanentSinkError, match="2 hard links"):
        await sink.deliver(make_delivery())
    assert victim.read_text() == "untouched\n"
    assert os.stat(victim).st_nlink == 2


async def test_something_other_than_a_file_at_the_target_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "events.jsonl")
    os.mkfifo(tmp_path / "job-1.json")
    for file_format in ("json", "jsonl"):
        with pytest.raises(PermanentSinkError, match="not a regular file"):
            await make_sink(tmp_path, format=file_format).deliver(make_delivery())


RACE_WRITES = 500
# The racing thread is at the scheduler's mercy: on a busy machine it may not run
# for a while, so the writes go on (up to this many) until the race went both ways.
MAX_RACE_WRITES = 5000


def race_target_name(directory: Path, victim: Path, name: str) -> Callable[[int], None]:
    """Swap a symlink to `victim` and a hard link of it in at `name`, and take them away."""

    def swap(step: int) -> None:
        spare = directory / f".spare-{step}"
        if step % 3 == 0:
            spare.symlink_to(victim)
        elif step % 3 == 1:
            os.link(victim, spare)
        else:
            (directory / name).unlink()
            return
        os.replace(spare, directory / name)

    return swap


def race_intermediate_directory(directory: Path, outside: Path) -> Callable[[int], None]:
    """Move `sub` away and put a symlink to `outside` in its place, then remove the link."""

    def swap(step: int) -> None:
        sub = directory / "sub"
        if step % 2 == 0:
            with contextlib.suppress(OSError):
                sub.rename(directory / f"parked-{step}")
            sub.symlink_to(outside, target_is_directory=True)
        else:
            sub.unlink()

    return swap


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("file_format", "filename", "racer"),
    [
        ("json", "{job_id}.json", "target"),
        ("jsonl", "{job_id}.jsonl", "target"),
        ("json", "sub/{job_id}.json", "intermediate"),
        ("jsonl", "sub/{job_id}.jsonl", "intermediate"),
    ],
)
async def test_links_swapped_in_during_writes_never_send_an_envelope_outside(
    tmp_path: Path, file_format: str, filename: str, racer: str
) -> None:
    directory, outside = tmp_path / "out", tmp_path / "outside"
    directory.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("untouched\n")
    name = filename.replace("{job_id}", "job-1")
    swap = (
        race_target_name(directory, victim, name)
        if racer == "target"
        else race_intermediate_directory(directory, outside)
    )
    sink = make_sink(directory, format=file_format, filename=filename)
    outcomes: Counter[str] = Counter()
    number = 0
    with racing(swap):
        while number < RACE_WRITES or not (outcomes["refused"] and outcomes["written"]):
            assert number < MAX_RACE_WRITES, f"the race never went both ways: {outcomes}"
            number += 1
            received_at = f"2026-11-23T10:{number // 100:02d}:00.{number % 100:06d}Z"
            try:
                await sink.deliver(make_delivery(f"msg_{number}", received_at=received_at))
                outcomes["written"] += 1
            except PermanentSinkError as error:
                assert "symbolic link" in error.reason or "hard links" in error.reason
                outcomes["refused"] += 1
            except RetryableSinkError:
                outcomes["retry"] += 1  # a component vanished between two steps
    assert victim.read_text() == "untouched\n"
    assert [path.name for path in outside.iterdir()] == ["victim"]


class _RefusingExecutor(ThreadPoolExecutor):
    """A default executor that refuses work: whoever submits to it fails."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the loop's default executor was used")


async def test_writes_run_on_the_sinks_own_threads_not_the_loops_default_pool(
    tmp_path: Path,
) -> None:
    # A slow disk must not hold up the default pool's other users (name lookups).
    loop = asyncio.get_running_loop()
    loop.set_default_executor(_RefusingExecutor(max_workers=1))
    sink = make_sink(tmp_path, filename="{id}.json")
    try:
        result = await sink.deliver(make_delivery("msg_own_threads"))
        second = await sink.deliver(make_delivery("msg_second"))
    finally:
        await sink.close()
    assert "msg_own_threads.json" in result.detail
    assert "msg_second.json" in second.detail
    assert all_files(tmp_path) == ["msg_own_threads.json", "msg_second.json"]
