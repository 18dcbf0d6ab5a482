"""Importing gearmand's ``-q libsqlite3`` queue files, written by the real gearmand."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.procs import GEARMAND, gearmand

from gearproto import NEED_DATA, Connection, Priority, Side
from gearproto.events import JobCreated, SubmitJob, SubmitJobEpoch, SubmitReduceJob
from gearproto.server.gearmand_import import main, read_gearmand_queue
from gearproto.server.sqlite_store import SQLiteStore
from gearproto.server.storage import StoreBatch, StoreCorruptError, StoredJob, StoreOpenError

needs_gearmand = pytest.mark.skipif(GEARMAND is None, reason="gearmand is not installed")

Submission = SubmitJob | SubmitJobEpoch | SubmitReduceJob


def submit_all(address: tuple[str, int], submissions: Sequence[Submission]) -> None:
    """Submit one at a time, each acknowledged with JOB_CREATED before the next."""
    conn = Connection(Side.CLIENT)
    with socket.create_connection(address, timeout=10) as sock:
        for submission in submissions:
            sock.sendall(conn.send(submission))
            while (event := conn.next_event()) is NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    conn.receive_eof()
                else:
                    conn.receive_data(data)
            assert isinstance(event, JobCreated), event


EPOCH = int(time.time()) + 86_400
SUBMISSIONS: list[Submission] = [
    SubmitJob(b"resize", b"u-normal", b"n1", Priority.NORMAL, background=True),
    SubmitJob(b"resize", b"u-high", b"h1", Priority.HIGH, background=True),
    SubmitJob(b"resize", b"u-low", b"l1", Priority.LOW, background=True),
    SubmitJobEpoch(b"resize", b"u-epoch", EPOCH, b"e1"),
    SubmitJob(b"mail", b"u-bin", b"\0\x01binary\xff" * 50, Priority.NORMAL, background=True),
    SubmitJob(b"mail", b"u-empty", b"", Priority.HIGH, background=True),
    SubmitReduceJob(b"mail", b"u-reduce", b"reducer", b"", b"r1", background=True),
    SubmitJob(b"mail", "ü-\xff".encode("utf-8", "surrogateescape"), b"utf8", Priority.LOW, True),
    SubmitJob(b"fn.with-dash", b"u-dash", b"d", Priority.NORMAL, background=True),
    SubmitJob(b"resize", b"u-normal-2", b"n2", Priority.NORMAL, background=True),
]
# gearmand stores SUBMIT_JOB_EPOCH as NORMAL with its time, and drops the reducer.
EXPECTED = [
    StoredJob(1, b"resize", b"u-normal", b"n1", Priority.NORMAL),
    StoredJob(2, b"resize", b"u-high", b"h1", Priority.HIGH),
    StoredJob(3, b"resize", b"u-low", b"l1", Priority.LOW),
    StoredJob(4, b"resize", b"u-epoch", b"e1", Priority.NORMAL, when=EPOCH),
    StoredJob(5, b"mail", b"u-bin", b"\0\x01binary\xff" * 50, Priority.NORMAL),
    StoredJob(6, b"mail", b"u-empty", b"", Priority.HIGH),
    StoredJob(7, b"mail", b"u-reduce", b"r1", Priority.NORMAL),
    StoredJob(8, b"mail", "ü-\xff".encode("utf-8", "surrogateescape"), b"utf8", Priority.LOW),
    StoredJob(9, b"fn.with-dash", b"u-dash", b"d", Priority.NORMAL),
    StoredJob(10, b"resize", b"u-normal-2", b"n2", Priority.NORMAL),
]


def gearmand_queue_file(tmp_path: Path, table: str | None = None) -> Path:
    """A queue file written by the real gearmand, which is then killed (SIGKILL)."""
    db = tmp_path / "gearmand-queue.db"
    args = ["-q", "libsqlite3", "--libsqlite3-db", str(db)]
    if table:
        args += ["--libsqlite3-table", table]
    with gearmand(tmp_path, *args) as server:
        submit_all(server.address, SUBMISSIONS)
        server.kill()
    return db


@needs_gearmand
def test_every_job_priority_and_epoch_of_a_real_gearmand_file(tmp_path: Path) -> None:
    db = gearmand_queue_file(tmp_path)
    assert read_gearmand_queue(db) == EXPECTED
    assert read_gearmand_queue(db, first_job_id=101)[0].job_id == 101


@needs_gearmand
def test_the_store_imports_a_gearmand_file_in_place(tmp_path: Path) -> None:
    db = gearmand_queue_file(tmp_path)
    with SQLiteStore(db) as store:  # what `--libsqlite3-db <gearmand's file>` does
        assert store.imported_from_gearmand == len(EXPECTED)
        assert store.load() == EXPECTED
    with SQLiteStore(db) as store:  # imported once: the table was renamed
        assert store.imported_from_gearmand == 0
        assert store.load() == EXPECTED
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    kept = conn.execute("SELECT count(*) FROM gearman_queue_imported").fetchone()[0]
    conn.close()
    assert "gearman_queue" not in tables
    assert kept == len(EXPECTED)


@needs_gearmand
def test_custom_table_name(tmp_path: Path) -> None:
    db = gearmand_queue_file(tmp_path, table="custom_q")
    assert read_gearmand_queue(db, "custom_q") == EXPECTED
    with pytest.raises(StoreOpenError, match="no such table"):
        read_gearmand_queue(db)
    with SQLiteStore(db, gearmand_table="custom_q") as store:
        assert store.load() == EXPECTED


@needs_gearmand
def test_gearmand_merges_empty_uniques_and_cannot_replay_empty_payloads(
    tmp_path: Path,
) -> None:
    # The two flaws of gearmand's queue the store avoids, shown on the real thing.
    db = tmp_path / "q.db"
    args = ["-q", "libsqlite3", "--libsqlite3-db", str(db)]
    with gearmand(tmp_path, *args) as server:
        submit_all(
            server.address,
            [
                SubmitJob(b"f", b"", b"first", Priority.NORMAL, background=True),
                SubmitJob(b"f", b"", b"second", Priority.NORMAL, background=True),
                SubmitJob(b"f", b"empty-payload", b"", Priority.NORMAL, background=True),
            ],
        )
        server.kill()
    jobs = read_gearmand_queue(db)
    assert [(j.unique, j.data) for j in jobs] == [(b"", b"second"), (b"empty-payload", b"")]
    assert GEARMAND is not None
    restart = subprocess.run(
        [GEARMAND, "-L", "127.0.0.1", "-p", "0", "-l", "stderr", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert restart.returncode != 0
    assert "failed to reload queue" in restart.stderr


# ------------------------------------------------------------ hand-made files


def make_gearmand_table(path: Path, rows: Sequence[tuple[object, ...]], table: str = "t") -> None:
    """gearmand's columns without its key, so that bad rows can be written."""
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TABLE {table} (unique_key TEXT, function_name TEXT, priority INTEGER, "
        "data BLOB, when_to_run INTEGER)"
    )
    conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


BAD = [
    ("good", "f", 1, b"ok", 0),
    ("p5", "f", 5, b"x", 0),
    ("ptext", "f", "high", b"x", 0),
    ("nofn", None, 1, b"x", 0),
    ("u" * 65, "f", 1, b"x", 0),
    ("wtext", "f", 1, b"x", "soon"),
    ("wneg", "f", 1, b"x", -1),
    ("dint", "f", 1, 42, 0),
    ("emptyfn", "", 1, b"x", 0),
    ("good2", "g", 0, None, None),
]
BAD_MESSAGES = {
    2: "priority must be in 0..2, not 5",
    3: "priority must be an INTEGER, not TEXT",
    4: "function_name must be TEXT, not NULL",
    5: "unique is 65 bytes long; the limit is 64",
    6: "when_to_run must be an INTEGER, not TEXT",
    7: "when must be in 0..",
    8: "data must be bytes, not 42",
    9: "function must not be empty",
}


def test_bad_rows_are_all_named(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    make_gearmand_table(db, BAD)
    with pytest.raises(StoreCorruptError) as caught:
        read_gearmand_queue(db, "t")
    message = str(caught.value)
    assert f"{len(BAD_MESSAGES)} bad rows" in message
    for rowid, fragment in BAD_MESSAGES.items():
        assert f"table t rowid={rowid} " in message
        line = next(x for x in message.splitlines() if f"rowid={rowid} " in x)
        assert fragment in line, line


def test_in_place_import_with_bad_rows_refuses_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    make_gearmand_table(db, BAD, table="gearman_queue")
    before = db.read_bytes()
    with pytest.raises(StoreCorruptError, match="nothing was imported"):
        SQLiteStore(db)
    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    rows = conn.execute("SELECT count(*) FROM gearman_queue").fetchone()[0]
    conn.close()
    assert tables == ["gearman_queue"]
    assert rows == len(BAD)
    assert len(db.read_bytes()) >= len(before)


def test_in_place_import_can_quarantine_bad_rows(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    make_gearmand_table(db, BAD, table="gearman_queue")
    with SQLiteStore(db, bad_rows="quarantine") as store:
        assert store.load() == [
            StoredJob(1, b"f", b"good", b"ok", Priority.NORMAL),
            StoredJob(2, b"g", b"good2", b"", Priority.HIGH),
        ]
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    quarantined = conn.execute(
        "SELECT source, reason, function, unique_key, priority FROM gearproto_quarantine"
    ).fetchall()
    conn.close()
    assert len(quarantined) == len(BAD_MESSAGES)
    assert quarantined[0][1] == b"priority must be in 0..2, not 5"
    assert quarantined[0][2:] == (b"f", b"p5", 5)


def test_old_tables_without_when_to_run(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER, "
        "data BLOB, PRIMARY KEY (unique_key, function_name))"
    )
    conn.execute("INSERT INTO gearman_queue VALUES ('a', 'f', 2, x'01')")
    conn.commit()
    conn.close()
    assert read_gearmand_queue(db) == [StoredJob(1, b"f", b"a", b"\x01", Priority.LOW)]


def test_without_rowid_table(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE q (unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB, "
        "when_to_run INTEGER, PRIMARY KEY (unique_key, function_name)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO q VALUES ('b', 'f', 1, x'02', 0), ('a', 'f', 1, x'01', 7)")
    conn.commit()
    conn.close()
    jobs = read_gearmand_queue(db, "q")
    assert [(j.job_id, j.unique, j.when) for j in jobs] == [(1, b"a", 7), (2, b"b", 0)]


def test_file_and_table_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="no such file"):
        read_gearmand_queue(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreOpenError, match="cannot read a gearmand queue"):
        read_gearmand_queue(junk)
    db = tmp_path / "q.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE gearman_queue (unique_key TEXT, payload BLOB)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreOpenError, match="missing column function_name, priority, data"):
        read_gearmand_queue(db)
    with pytest.raises(StoreOpenError, match="no such table"):
        read_gearmand_queue(db, "other")
    with pytest.raises(ValueError, match="invalid gearmand table name"):
        read_gearmand_queue(db, 'x" OR 1; --')


# ------------------------------------------------------------------------ CLI


def test_cli_copies_jobs_into_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "gearmand.db"
    make_gearmand_table(source, [("a", "f", 0, b"1", 0), ("b", "f", 2, b"2", 5)], "gearman_queue")
    original = source.read_bytes()
    dest = tmp_path / "store.db"
    with SQLiteStore(dest) as store:  # a store that already holds a job
        store.apply(StoreBatch(1, added=[StoredJob(7, b"x", b"", b"", Priority.NORMAL)]))
    assert main([str(source), str(dest)]) == 0
    assert "imported 2 jobs" in capsys.readouterr().out
    with SQLiteStore(dest) as store:
        assert store.load() == [
            StoredJob(7, b"x", b"", b"", Priority.NORMAL),
            StoredJob(8, b"f", b"a", b"1", Priority.HIGH),
            StoredJob(9, b"f", b"b", b"2", Priority.LOW, when=5),
        ]
    assert source.read_bytes() == original


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "gearmand.db"
    make_gearmand_table(source, BAD, "gearman_queue")
    assert main([str(source), str(tmp_path / "store.db")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "8 bad rows" in err
    assert main([str(tmp_path / "nope.db"), str(tmp_path / "store.db")]) == 1
    assert "no such file" in capsys.readouterr().err
    with SQLiteStore(tmp_path / "store.db") as store:
        assert store.load() == []  # nothing half-imported
