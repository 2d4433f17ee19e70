"""Log reading logic: native log files and cursors, docker entry selection, chunking.

The native tests write the task's log files by hand in a temporary directory (no task
runs) and rotate them with the runtime's own `_bound_log`; the docker tests exercise the
pure selection and saved-file functions; chunking is checked against the wire limits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_engine.logs import TaskSnapshot, build_chunks, error_chunk
from node_engine.runtimes.base import BadCursor, LogPiece, LogRead, TaskHandle, utf8_prefix
from node_engine.runtimes.docker import (
    LogEntry,
    decode_saved,
    docker_ts_ns,
    encode_saved,
    parse_frame,
    parse_log_cursor,
    select_entries,
)
from node_engine.runtimes.native import NativeRuntime
from schemas.common import Runtime
from schemas.job import TaskState
from schemas.mqtt import (
    LOGS_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    Channel,
    LogsChunkMessage,
    LogsRequest,
    LogsRequestMessage,
    MessageError,
    decode,
    encode,
    topic,
)

# ------------------------------------------------------------------ native


class NativeLog:
    """A native runtime over a hand-written task log (no process)."""

    def __init__(self, tmp_path: Path, max_log_bytes: int = 4096) -> None:
        self.rt = NativeRuntime(tmp_path / "state", max_log_bytes=max_log_bytes, use_cgroups=False)
        self.dir = self.rt.task_dir("t1")
        self.dir.mkdir(parents=True)
        self.path = self.dir / "output.log"
        self.handle = TaskHandle(instance_id="t1", runtime=Runtime.NATIVE, log_path=str(self.path))

    def write(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def rotate(self) -> None:
        self.rt._bound_log(self.handle)

    def read(self, **kwargs: object) -> LogRead:
        return self.rt.read_logs("t1", self.handle, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def nlog(tmp_path: Path) -> NativeLog:
    return NativeLog(tmp_path)


def lines_of(read: LogRead) -> list[bytes]:
    return [p.data for p in read.pieces]


def test_native_empty_and_missing_log(nlog: NativeLog) -> None:
    read = nlog.read(tail=10)
    assert read.pieces == [] and read.cursor == "n0" and not read.more
    nlog.write(b"")
    assert nlog.read(cursor="n0").pieces == []
    assert nlog.rt.read_logs("never-ran", None, tail=5).pieces == []


def test_native_tail_bounds(nlog: NativeLog) -> None:
    nlog.write(b"".join(b"line %d\n" % i for i in range(50)))
    assert lines_of(nlog.read(tail=3)) == [b"line 47\n", b"line 48\n", b"line 49\n"]
    assert len(nlog.read(tail=10_000).pieces) == 50
    zero = nlog.read(tail=0)
    assert zero.pieces == [] and zero.cursor == f"n{nlog.path.stat().st_size}"
    # max_bytes bounds the tail: whole lines only, the newest that fit
    small = nlog.read(tail=50, max_bytes=20)
    assert lines_of(small) == [b"line 48\n", b"line 49\n"]
    # each piece's cursor continues right after it
    assert small.pieces[-1].cursor == small.cursor


def test_native_cursor_follows_and_withholds_incomplete_line(nlog: NativeLog) -> None:
    nlog.write(b"a\nb\n")
    first = nlog.read(tail=1)
    assert lines_of(first) == [b"b\n"]
    nlog.write(b"c\npart")
    nxt = nlog.read(cursor=first.cursor)
    assert lines_of(nxt) == [b"c\n"]  # "part" waits for its newline ...
    rest = nlog.read(cursor=nxt.cursor)
    assert lines_of(rest) == [b"part"]  # ... unless nothing else is left
    nlog.write(b"ial\n")
    assert lines_of(nlog.read(cursor=rest.cursor)) == [b"ial\n"]
    same = nlog.read(cursor=nlog.read(tail=0).cursor)
    assert same.pieces == [] and not same.more


def test_native_cursor_survives_rotation(tmp_path: Path) -> None:
    nlog = NativeLog(tmp_path, max_log_bytes=100)
    nlog.write(b"".join(b"line %02d\n" % i for i in range(20)))  # 160 bytes
    mark = nlog.read(tail=1).cursor  # after line 19
    nlog.write(b"after 1\n")
    nlog.rotate()
    assert (nlog.dir / "output.log.offset").read_text() == "168"
    assert nlog.path.stat().st_size == 0
    nlog.write(b"after 2\n")
    read = nlog.read(cursor=mark)
    assert lines_of(read) == [b"after 1\n", b"after 2\n"] and not read.skipped
    # tail reads see through the rotation too
    assert lines_of(nlog.read(tail=3)) == [b"line 19\n", b"after 1\n", b"after 2\n"]
    # a second rotation: the cursor still means the same byte
    nlog.write(b"x" * 120 + b"\n")
    nlog.rotate()
    assert lines_of(nlog.read(cursor=read.cursor))[-1].endswith(b"x\n")


def test_native_rotated_away_cursor_is_skipped_to_a_line_start(tmp_path: Path) -> None:
    nlog = NativeLog(tmp_path, max_log_bytes=100)
    nlog.write(b"".join(b"line %02d\n" % i for i in range(40)))
    nlog.rotate()
    read = nlog.read(cursor="n0")
    assert read.skipped
    assert all(p.endswith(b"\n") and p.startswith(b"line") for p in lines_of(read))
    assert lines_of(read)[-1] == b"line 39\n"
    # a cursor past the end (the log was reset under it): from the start, marked skipped
    reset = nlog.read(cursor="n999999")
    assert reset.skipped and lines_of(reset)[-1] == b"line 39\n"


def test_native_long_line_and_unicode_boundaries(nlog: NativeLog) -> None:
    text = "é" * 3000  # 6000 bytes, no newline: longer than max_bytes
    nlog.write(text.encode() + b"\n")
    read = nlog.read(cursor="n0", max_bytes=1001)
    assert read.more
    data = lines_of(read)[0]
    data.decode()  # cut at a character boundary, never inside one
    assert len(data) == 1000
    again = nlog.read(cursor=read.cursor, max_bytes=1001)
    again.pieces[0].data.decode()
    tail = nlog.read(tail=1, max_bytes=1001)  # the newest bytes of the one long line
    tail.pieces[0].data.decode()
    assert tail.pieces[0].data.endswith("é\n".encode())


def test_native_binary_output_is_kept_as_bytes(nlog: NativeLog) -> None:
    nlog.write(b"\x00\xff\xfe bin\n\x1b[31mred\x1b[0m\n")
    read = nlog.read(tail=10)
    assert lines_of(read) == [b"\x00\xff\xfe bin\n", b"\x1b[31mred\x1b[0m\n"]


def test_native_bad_cursor_and_discard(nlog: NativeLog) -> None:
    with pytest.raises(BadCursor):
        nlog.read(cursor="d123.1")
    nlog.write(b"x\n")
    nlog.rotate()
    nlog.rt.discard_logs("t1")
    assert not nlog.path.exists()
    assert nlog.read(tail=5).pieces == []


def test_utf8_prefix() -> None:
    assert utf8_prefix(b"") == 0
    assert utf8_prefix("aé".encode()) == 3
    assert utf8_prefix("aé".encode()[:2]) == 1
    assert utf8_prefix("€".encode()[:2]) == 2  # nothing complete: keep going anyway
    assert utf8_prefix(b"x" + "😀".encode()[:3]) == 1


# ------------------------------------------------------------------ docker


def test_docker_timestamps() -> None:
    assert docker_ts_ns(b"1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert docker_ts_ns(b"1970-01-01T01:00:00+01:00") == 0
    assert docker_ts_ns(b"2024-06-01T12:00:00.5Z") == docker_ts_ns(b"2024-06-01T12:00:00Z") + (  # type: ignore[operator]
        500_000_000
    )
    assert docker_ts_ns(b"garbage") is None
    assert parse_frame(b"1970-01-01T00:00:01Z hello\n") == LogEntry(1_000_000_000, b"hello\n")
    assert parse_frame(b"no stamp here", 7) == LogEntry(7, b"no stamp here")


def entries(*items: tuple[int, str]) -> list[LogEntry]:
    return [LogEntry(ns, text.encode()) for ns, text in items]


def test_docker_tail_and_cursor_dedupe_at_equal_timestamps() -> None:
    log = entries((10, "a\n"), (20, "b\n"), (20, "c\n"), (30, "d\n"))
    tail = select_entries(log, tail=2, cursor=None, max_bytes=1000)
    assert lines_of(tail) == [b"c\n", b"d\n"]
    assert [p.cursor for p in tail.pieces] == ["d20.2", "d30.1"]
    assert tail.cursor == "d30.1"
    # from the middle of two entries with one timestamp: the second only
    mid = select_entries(log, tail=0, cursor=(20, 1), max_bytes=1000)
    assert lines_of(mid) == [b"c\n", b"d\n"]
    # the daemon returns entries from the cursor's time on (inclusive): deduped
    assert select_entries(log, tail=0, cursor=(30, 1), max_bytes=1000).pieces == []
    # byte bound: at least one entry, and `more` when some were left
    bounded = select_entries(log, tail=0, cursor=(0, 0), max_bytes=3)
    assert lines_of(bounded) == [b"a\n"] and bounded.more
    assert select_entries([], tail=5, cursor=None, max_bytes=10).cursor == "d0.0"
    assert parse_log_cursor("d20.1") == (20, 1)
    with pytest.raises(BadCursor):
        parse_log_cursor("n12")


def test_docker_saved_file_round_trip_and_bound() -> None:
    log = entries((1, "one\n"), (2, "partial"), (3, "é\n"))
    assert decode_saved(encode_saved(log, 1000)) == log
    big = [LogEntry(i, b"x" * 99 + b"\n") for i in range(1, 101)]
    saved = encode_saved(big, 1000)
    assert len(saved) <= 1000
    back = decode_saved(saved)
    assert back == big[-len(back) :] and len(back) >= 8
    assert decode_saved(b"junk line\n12 ok\n") == [LogEntry(12, b"ok\n")]


# ------------------------------------------------------------------ chunking


def snapshot() -> TaskSnapshot:
    return TaskSnapshot(TaskState.FAILED, 3, True)


def test_chunks_respect_the_wire_bound_whatever_the_escaping() -> None:
    pieces = [
        LogPiece(b"\x01" * 30000 + b"\n", "n30001"),  # 6 JSON bytes per byte
        LogPiece("é".encode() * 20000 + b"\n", "n70002"),
        LogPiece(b"plain\n" * 5000, "n100002"),
    ]
    read = LogRead(pieces, "n100002")
    chunks = build_chunks(
        read, request_id="r1", instance_id="i1", start_cursor="n0", task=snapshot()
    )
    assert len(chunks) > 3
    for seq, chunk in enumerate(chunks):
        assert chunk.seq == seq and chunk.last == (seq == len(chunks) - 1)
        assert len(json.dumps(chunk.text, ensure_ascii=False).encode()) - 2 <= LOGS_CHUNK_BYTES
        message = LogsChunkMessage(node_id="n1", payload=chunk)
        raw = encode(message)
        assert len(raw) < MAX_MESSAGE_BYTES
        decode(raw, topic_name=topic("n1", Channel.LOGS))
    assert "".join(c.text for c in chunks).encode() == read.data
    assert chunks[-1].cursor == "n100002" and chunks[-1].ended and chunks[-1].exit_code == 3
    # a chunk made of part of a long line carries the cursor before that line
    assert chunks[0].cursor == "n0"


def test_chunks_of_an_empty_read_and_of_undecodable_bytes() -> None:
    (only,) = build_chunks(
        LogRead([], "n5"), request_id="r1", instance_id="i1", start_cursor="n5", task=None
    )
    assert only.last and only.text == "" and only.cursor == "n5" and only.state is None
    (chunk,) = build_chunks(
        LogRead([LogPiece(b"\xff ok\n", "n4")], "n4", more=True),
        request_id="r1",
        instance_id="i1",
        start_cursor="",
        task=snapshot(),
    )
    assert chunk.text == "\ufffd ok\n" and chunk.more
    err = error_chunk("r1", "i1", "unknown_instance", "not here")
    assert err.last and err.error == "not here" and err.error_code == "unknown_instance"


# ------------------------------------------------------------------ wire


def test_logs_request_validity_is_bounded() -> None:
    ok = LogsRequestMessage(
        node_id="n1", ts=100.0, payload=LogsRequest(instance_id="i1", expires_at=106.0)
    )
    assert ok.ttl_s == 6.0
    raw = encode(ok)
    assert decode(raw, topic_name=topic("n1", Channel.COMMANDS)).kind == "logs_request"
    with pytest.raises(MessageError) as info:
        decode(raw, topic_name=topic("n1", Channel.LOGS))
    assert info.value.reason == "wrong_channel"
    for expires in (99.0, 100.0, 161.0):
        bad = json.loads(raw)
        bad["payload"]["expires_at"] = expires
        with pytest.raises(MessageError) as info:
            decode(json.dumps(bad), topic_name=topic("n1", Channel.COMMANDS))
        assert info.value.reason == "invalid" and "expires_at" in info.value.detail
    bad = json.loads(raw)
    bad["payload"]["tail"] = 10_001
    with pytest.raises(MessageError, match="tail"):
        decode(json.dumps(bad))
