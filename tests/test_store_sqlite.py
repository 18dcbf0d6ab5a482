"""SQLiteStore: durable, group-committed, validated, single-owner job storage (real files)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gearproto import Limits, Priority
from gearproto.server.sqlite_store import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore
from gearproto.server.storage import (
    JobStore,
    StoreBatch,
    StoreBrokenError,
    StoreCorruptError,
    StoredJob,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreOpenError,
    first_free_job_id,
)


def job(job_id: int, **fields: object) -> StoredJob:
    values: dict[str, object] = {
        "function": b"f",
        "unique": b"u%d" % job_id,
        "data": b"data %d" % job_id,
        "priority": Priority.NORMAL,
    }
    values.update(fields)
    return StoredJob(job_id, **values)  # type: ignore[arg-type]


def raw_rows(path: Path, table: str = "gearproto_jobs") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def test_is_a_job_store(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "q.db") as store:
        assert isinstance(store, JobStore)


def test_round_trip_keeps_order_priority_when_and_reducer(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    jobs = [
        job(1, priority=Priority.LOW),
        job(2, priority=Priority.HIGH, when=1_900_000_000),
        job(3, data=b"\0binary\xff" * 100, reducer=b"reduce_fn"),
        job(4, function=b"other", unique=b"", data=b""),
        job(5, priority=Priority.HIGH),
    ]
    with SQLiteStore(path) as store:
        assert store.load() == []
        store.apply(StoreBatch(1, added=jobs[:2]))
        store.apply(StoreBatch(2, added=jobs[2:]))
    with SQLiteStore(path) as store:
        loaded = store.load()
    assert loaded == jobs
    assert [type(j.priority) for j in loaded] == [Priority] * 5
    assert first_free_job_id(loaded) == 6


def test_load_is_in_job_id_order_whatever_the_insert_order(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "q.db") as store:
        store.apply(StoreBatch(1, added=[job(30), job(10)]))
        store.apply(StoreBatch(2, added=[job(20)]))
        assert [j.job_id for j in store.load()] == [10, 20, 30]


def test_empty_and_shared_uniques_are_never_merged(tmp_path: Path) -> None:
    # gearmand's INSERT OR REPLACE keeps one row per (unique, function): we keep all.
    path = tmp_path / "q.db"
    same = [job(i, unique=b"", data=b"payload %d" % i) for i in range(1, 4)]
    shared = [job(i, unique=b"dup", data=b"payload %d" % i) for i in range(4, 6)]
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=same + shared))
        store.apply(StoreBatch(2, removed=[2, 4]))  # finishing one removes only that one
    with SQLiteStore(path) as store:
        assert store.load() == [same[0], same[2], shared[1]]


def test_removals_are_idempotent_and_add_remove_in_one_batch_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=[job(1)]))
        store.apply(StoreBatch(2, added=[job(2), job(3)], removed=[3, 1, 99]))
        store.apply(StoreBatch(3, removed=[1, 99]))
        assert store.commits == 3
        store.apply(StoreBatch(4))  # nothing to do: no commit, no fsync
        store.apply(StoreBatch(5, added=[job(4)], removed=[4]))
        assert store.commits == 3
        assert store.load() == [job(2)]
    assert [row[0] for row in raw_rows(path)] == [2]


def test_a_failing_batch_stores_nothing_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=[job(1), job(2)]))
        with pytest.raises(StoreError, match="batch 2"):
            # job 1 is stored already: the whole batch is rolled back.
            store.apply(StoreBatch(2, added=[job(3), job(1)], removed=[2]))
        with pytest.raises(StoreError, match="batch 3"):
            store.apply(StoreBatch(3, added=[job(4, data="text, not bytes")]))
        with pytest.raises(StoreError, match="too large"):
            store.apply(StoreBatch(4, added=[job(5, when=2**64)]))
        store.apply(StoreBatch(5, added=[job(6)]))
        assert [j.job_id for j in store.load()] == [1, 2, 6]


def test_wal_and_synchronous_full_are_in_force(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == b"wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA locking_mode").fetchone()[0] == b"exclusive"
    conn2 = sqlite3.connect(path)
    try:
        assert conn2.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn2.execute("SELECT version FROM gearproto_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
    finally:
        conn2.close()


# --------------------------------------------------------------- single owner


def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=[job(1)]))
        with pytest.raises(StoreLockedError, match="in use by another process"):
            SQLiteStore(path)
        store.apply(StoreBatch(2, added=[job(2)]))  # the owner is unaffected
    with SQLiteStore(path) as store:  # released by close()
        assert [j.job_id for j in store.load()] == [1, 2]


def test_a_second_process_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    script = (
        "import sys\n"
        "from gearproto.server.sqlite_store import SQLiteStore\n"
        "from gearproto.server.storage import StoreLockedError\n"
        "try:\n"
        "    SQLiteStore(sys.argv[1])\n"
        "except StoreLockedError as e:\n"
        "    print('refused:', e); sys.exit(3)\n"
    )
    with SQLiteStore(path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert "in use by another process" in result.stdout
    # Once the owner is gone, another process may open it.
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


RACER = """
import sys, time
from gearproto.server.sqlite_store import SQLiteStore
from gearproto.server.storage import StoreLockedError
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
try:
    store = SQLiteStore(sys.argv[1])
except StoreLockedError:
    print("refused")
else:
    time.sleep(1.5)  # hold it while the others try
    store.close()
    print("owner")
"""


@pytest.mark.parametrize("existing", ["new file", "gearmand file"])
def test_servers_starting_together_get_one_owner(tmp_path: Path, existing: str) -> None:
    path = tmp_path / "q.db"
    if existing == "gearmand file":
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER,"
            " data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
        )
        conn.execute("INSERT INTO gearman_queue VALUES ('u', 'f', 1, x'00', 0)")
        conn.commit()
        conn.close()
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    start = time.time() + 1.0
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert outcomes == ["owner", "refused", "refused", "refused"]
    with SQLiteStore(path) as store:
        assert len(store.load()) == (1 if existing == "gearmand file" else 0)


def test_apply_from_a_writer_thread(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "q.db") as store:
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for n in range(1, 51):
                    store.apply(StoreBatch(n, added=[job(n)]))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        assert errors == []
        assert len(store.load()) == 50


def test_closed_store_raises(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.apply(StoreBatch(1, added=[job(1)]))
    with pytest.raises(StoreError, match="closed"):
        store.load()


# ------------------------------------------------------------- bad files


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreOpenError, match="not a SQLite database"):
        SQLiteStore(path)
    assert path.read_bytes() == b"this is not a database at all" * 200


def test_directory_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="is a directory"):
        SQLiteStore(tmp_path)
    with pytest.raises(StoreOpenError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "q.db")


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes read-only files: use a place nobody can write
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc when running as root")
        path = Path("/proc/gearproto-store-test.db")
    else:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o500)
        path = directory / "q.db"
    with pytest.raises(StoreOpenError, match="cannot write the file or its directory"):
        SQLiteStore(path)


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreOpenError, match=r"not a job store's \(users\)"):
        SQLiteStore(path)
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    assert names == ["users"]


def test_another_applications_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    conn.close()
    with pytest.raises(StoreOpenError, match="not a gearproto job store"):
        SQLiteStore(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE gearproto_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreOpenError, match="newer gearproto"):
        SQLiteStore(path)


def test_a_damaged_schema_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO gearproto_schema VALUES (1)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreOpenError, match="damaged gearproto_schema"):
        SQLiteStore(path)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=[job(n, data=bytes(2000)) for n in range(1, 200)]))
    raw = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(raw) - page, page):  # scribble over every b-tree page
        raw[offset : offset + 16] = b"\xde\xad\xbe\xef" * 4
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreOpenError, match=r"corrupt|malformed"):
        SQLiteStore(path)


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad_rows"):
        SQLiteStore(tmp_path / "q.db", bad_rows="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        SQLiteStore(tmp_path / "q.db", max_bytes=10)
    with pytest.raises(ValueError, match="invalid gearmand table name"):
        SQLiteStore(tmp_path / "q.db", gearmand_table="x; DROP TABLE y")


# ------------------------------------------------------------- bad rows


BAD_ROWS = {
    # job_id: (column, value, expected message fragment)
    10: ("priority", 7, "priority must be in 0..2, not 7"),
    11: ("unique_key", b"u" * 65, "unique is 65 bytes long; the limit is 64"),
    12: ("function", b"", "function must not be empty"),
    13: ("function", b"a\0b", "function contains a NUL byte"),
    14: ("when_to_run", -5, "when must be in 0..9223372036854775807, not -5"),
    15: ("reducer", b"r" * 600, "reducer is 600 bytes long; the limit is 512"),
}


def _store_with_bad_rows(path: Path) -> list[StoredJob]:
    good = [job(1), job(2, priority=Priority.HIGH), job(20)]
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=good + [job(n) for n in BAD_ROWS]))
    conn = sqlite3.connect(path)
    for job_id, (column, value, _) in BAD_ROWS.items():
        conn.execute(f"UPDATE gearproto_jobs SET {column} = ? WHERE job_id = ?", (value, job_id))
    conn.commit()
    conn.close()
    return good


def test_bad_rows_refuse_the_start_and_name_every_row(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    good = _store_with_bad_rows(path)
    with pytest.raises(StoreCorruptError) as caught:
        SQLiteStore(path)  # refused when opened, before a server could listen
    message = str(caught.value)
    assert "6 bad rows" in message
    for job_id, (_, _, fragment) in BAD_ROWS.items():
        assert f"gearproto_jobs row job_id={job_id}: {fragment}" in message
    assert [p.where.rsplit("=", 1)[1] for p in caught.value.problems] == [str(n) for n in BAD_ROWS]
    # Nothing was changed: the rows are still there for the operator.
    assert len(raw_rows(path)) == len(good) + len(BAD_ROWS)


def test_bad_rows_can_be_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.db"
    good = _store_with_bad_rows(path)
    with SQLiteStore(path, bad_rows="quarantine") as store:
        assert store.load() == good
    assert sum("quarantined" in r.message for r in caplog.records) == len(BAD_ROWS)
    quarantined = raw_rows(path, "gearproto_quarantine")
    assert len(quarantined) == len(BAD_ROWS)
    reasons = [row[3] for row in quarantined]
    assert len(reasons) == len(BAD_ROWS)
    for reason, (_, _, fragment) in zip(reasons, BAD_ROWS.values(), strict=True):
        assert isinstance(reason, str)
        assert reason.startswith(fragment)
    assert quarantined[0][4:7] == (b"f", b"u10", b"data 10")  # raw values kept
    with SQLiteStore(path) as store:  # later starts are clean, even when refusing
        assert store.load() == good
        assert store.load() == good  # a second load reads the file again


def test_rows_are_checked_against_the_servers_limits(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteStore(path) as store:
        store.apply(StoreBatch(1, added=[job(1, data=b"x" * 100)]))
    with pytest.raises(StoreCorruptError, match="data is 100 bytes long; the limit is 50"):
        SQLiteStore(path, limits=Limits(max_packet_size=50))


# ------------------------------------------------------------------ disk full


def test_full_store_refuses_the_batch_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    stored: list[int] = []
    with SQLiteStore(path, max_bytes=256 * 1024) as store:
        error: StoreError | None = None
        for batch_id in range(1, 1000):
            ids = list(range(len(stored) + 1, len(stored) + 6))
            try:
                store.apply(StoreBatch(batch_id, added=[job(n, data=bytes(4000)) for n in ids]))
            except StoreFullError as full:
                error = full
                break
            stored += ids
        assert error is not None
        assert "full; nothing of this batch was stored" in str(error)
        assert [j.job_id for j in store.load()] == stored  # the full batch left no trace
        store.apply(StoreBatch(2000, removed=stored[:20]))  # removals still work
        store.apply(StoreBatch(2001, added=[job(100_000, data=bytes(4000))]))
        assert [j.job_id for j in store.load()] == [*stored[20:], 100_000]
    assert len(stored) > 20


# ------------------------------------------------------------------ I/O errors


class FailingCommit:
    """The store's connection, except that COMMIT fails the way a failed fsync does.

    Real I/O errors cannot be provoked portably in a test, so this one is injected at
    the only call that can report it.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorname = "SQLITE_IOERR_FSYNC"
            raise error
        return self.conn.execute(sql, *args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_an_io_error_breaks_the_store_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    store.apply(StoreBatch(1, added=[job(1)]))
    real = store._conn
    assert real is not None
    store._conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(StoreBrokenError, match=r"SQLITE_IOERR_FSYNC.*refuses further writes"):
        store.apply(StoreBatch(2, added=[job(2)]))
    store._conn = real
    # Even with a healthy connection again, the store no longer trusts the file.
    with pytest.raises(StoreBrokenError):
        store.apply(StoreBatch(3, added=[job(3)]))
    with pytest.raises(StoreBrokenError):
        store.load()
    assert "refuses further writes" in caplog.text
    store.close()
    with SQLiteStore(path) as reopened:  # a restart replays what was acknowledged
        assert [j.job_id for j in reopened.load()] == [1]
