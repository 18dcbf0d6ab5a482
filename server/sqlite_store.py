"""The durable job store: background jobs in a SQLite file, group-committed.

Durability: the file is in WAL mode with ``synchronous=FULL``, so a commit returns
only after SQLite has written the batch's WAL frames and called ``fdatasync()`` on
the WAL file (``fsync()`` where fdatasync is missing; ``F_FULLFSYNC`` on macOS, where
plain fsync does not flush the drive's cache).  When :meth:`SQLiteStore.apply`
returns, the batch survives a crash of the process (it is in the kernel) and a crash
of the kernel or a power loss, *provided the storage honours cache flushes* (no
write cache that acknowledges flushes it has not done, no ``nobarrier`` mount).  The
directory is fsynced after the file and its WAL are created, so the files' names
are durable too.

One transaction per :class:`~gearproto.server.storage.StoreBatch`: every submission
the server gathered while the previous commit was running shares one commit and one
fsync.

Jobs are kept under the server's own job ids (``INTEGER PRIMARY KEY``), never under
(function, unique): background jobs with an empty or shared unique id each keep
their own row, and finishing one never deletes another's.

The file is held with an exclusive lock (``locking_mode=EXCLUSIVE``) for as long as
the store is open: a second server (or any other program) opening the same file is
refused with :class:`~gearproto.server.storage.StoreLockedError`.

Rows are validated when loaded.  A bad row refuses the start-up by default (the
error names every bad row), because skipping it would drop an acknowledged job
silently; ``bad_rows="quarantine"`` instead moves bad rows to the
``gearproto_quarantine`` table (kept for the operator, logged) and starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from operator import index
from pathlib import Path
from types import TracebackType
from typing import Literal

from gearproto import Limits, Priority

from .gearmand_import import DEFAULT_TABLE, check_table_name, read_gearmand_rows, table_exists
from .storage import (
    InvalidJobError,
    RowProblem,
    StoreBatch,
    StoreBrokenError,
    StoreCorruptError,
    StoredJob,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreOpenError,
    stored_job_from_values,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "BadRowPolicy", "SQLiteStore"]

log = logging.getLogger("gearproto.server.store")

#: ``PRAGMA application_id`` of a gearproto job store ("GPQ1").
APPLICATION_ID = 0x47505131
#: The schema this version writes; older ones are migrated when opened.
SCHEMA_VERSION = 1

BadRowPolicy = Literal["refuse", "quarantine"]

#: Seconds an opening store waits for a lock held by another opener.
_OPEN_TIMEOUT = 0.5

_JOBS = "gearproto_jobs"
_SCHEMA = "gearproto_schema"
_QUARANTINE = "gearproto_quarantine"

_CREATE = (
    f"CREATE TABLE {_SCHEMA} (version INTEGER NOT NULL) STRICT",
    # job_id is the rowid: inserts in id order append to the b-tree, and load() reads
    # it in FIFO order without a sort.
    f"""CREATE TABLE {_JOBS} (
        job_id INTEGER PRIMARY KEY,
        function BLOB NOT NULL,
        unique_key BLOB NOT NULL,
        data BLOB NOT NULL,
        priority INTEGER NOT NULL,
        when_to_run INTEGER NOT NULL,
        reducer BLOB NOT NULL
    ) STRICT""",
    # Not STRICT: it keeps bad rows' raw values, whatever their types.
    f"""CREATE TABLE {_QUARANTINE} (
        id INTEGER PRIMARY KEY,
        quarantined_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        function, unique_key, data, priority, when_to_run, reducer
    )""",
)
_INSERT = (
    f"INSERT INTO {_JOBS} (job_id, function, unique_key, data, priority, when_to_run, reducer)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = f"DELETE FROM {_JOBS} WHERE job_id = ?"
_SELECT = (
    f"SELECT job_id, function, unique_key, data, priority, when_to_run, reducer FROM {_JOBS}"
    " ORDER BY job_id"
)
# Whether any row breaks a rule of stored_job_from_values, checked in SQL: when none
# does (the normal case) rows become jobs without a Python check each, which makes
# start-up with many queued jobs several times faster.  Any hit takes the slow path,
# which names every bad row.
_ANY_BAD = f"""SELECT EXISTS (SELECT 1 FROM {_JOBS} WHERE
    typeof(function) != 'blob' OR typeof(unique_key) != 'blob' OR typeof(data) != 'blob'
    OR typeof(reducer) != 'blob' OR typeof(priority) != 'integer'
    OR typeof(when_to_run) != 'integer' OR job_id < 1
    OR priority NOT BETWEEN 0 AND 2 OR when_to_run < 0
    OR length(function) = 0 OR length(function) > :function OR length(reducer) > :function
    OR length(unique_key) > :unique OR length(data) > :data
    OR instr(function, x'00') OR instr(unique_key, x'00') OR instr(reducer, x'00'))"""
_PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_QUARANTINE_INSERT = (
    f"INSERT INTO {_QUARANTINE} (quarantined_at, source, reason, function, unique_key, data,"
    " priority, when_to_run, reducer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: Schema migrations: ``_MIGRATIONS[n]`` turns a version-n file into version n+1.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

# Errors after which the file's state is known (the transaction was rolled back) and
# the store stays usable.  Anything else (I/O errors, corruption) breaks the store.
_RECOVERABLE = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError)


def _error_name(error: BaseException) -> str:
    return str(getattr(error, "sqlite_errorname", ""))


class SQLiteStore:
    """A :class:`~gearproto.server.storage.JobStore` in a SQLite file.

    Opening takes the file's exclusive lock, creates or migrates the schema,
    (unless ``gearmand_table`` is None) imports a gearmand queue table found in the
    file, and reads and validates every stored job.  The constructor raises
    :class:`StoreOpenError` (or its subclass :class:`StoreLockedError`) when the file
    cannot be used, and :class:`StoreCorruptError` for bad rows, each with a clear
    message.

    Args:
        path: the store file (created if missing; its directory must exist).
        limits: the server's limits, which loaded rows must respect.
        bad_rows: ``"refuse"`` (default): opening raises :class:`StoreCorruptError`
            naming every bad row, and nothing is changed;
            ``"quarantine"``: bad rows are moved to the ``gearproto_quarantine`` table,
            each logged as a warning, and the valid ones are loaded.
        gearmand_table: a gearmand ``-q libsqlite3`` table (``--libsqlite3-table``) to
            import when the file holds one: its jobs are validated (``bad_rows``
            applies), added in its ``rowid`` order, and the table is renamed to
            ``<table>_imported`` in the same transaction, so no job is imported twice.
        max_bytes: cap on the file's size (SQLite's ``max_page_count``); a batch that
            would exceed it raises :class:`StoreFullError`.  The WAL file is extra.
        check_integrity: run ``PRAGMA quick_check`` when opening (linear in the file
            size) and refuse a corrupt file.

    Threads: :meth:`apply` blocks for a commit and an fsync, so the server calls it
    from one writer thread, never on its event loop.  All methods are serialised by
    a lock, so :meth:`close` may come from another thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limits: Limits | None = None,
        bad_rows: BadRowPolicy = "refuse",
        gearmand_table: str | None = DEFAULT_TABLE,
        max_bytes: int | None = None,
        check_integrity: bool = True,
    ) -> None:
        if bad_rows not in ("refuse", "quarantine"):
            raise ValueError(f"bad_rows must be 'refuse' or 'quarantine', not {bad_rows!r}")
        if max_bytes is not None and max_bytes < 64 * 1024:
            raise ValueError(f"max_bytes must be at least 65536, not {max_bytes}")
        if gearmand_table is not None:
            check_table_name(gearmand_table)
        self.path = Path(path)
        self.limits = limits or Limits()
        self.bad_rows: BadRowPolicy = bad_rows
        #: Jobs imported from a gearmand table when the store was opened.
        self.imported_from_gearmand = 0
        #: Commits done by :meth:`apply` (batches that changed something).
        self.commits = 0
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._conn: sqlite3.Connection | None = self._open(
            gearmand_table, max_bytes, check_integrity
        )
        # Rows are read and validated now, so that a bad file is refused when it is
        # opened (before a server listens), not later.
        try:
            self._preloaded: list[StoredJob] | None = self._read_jobs(self._conn)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(
        self, gearmand_table: str | None, max_bytes: int | None, check_integrity: bool
    ) -> sqlite3.Connection:
        where = str(self.path)
        if self.path.is_dir():
            raise StoreOpenError(f"{where}: is a directory, not a job store file")
        if not self.path.parent.is_dir():
            raise StoreOpenError(f"{where}: directory {self.path.parent} does not exist")
        created = not self.path.exists()
        try:
            # A short busy timeout while opening: when two servers start on one file at
            # the same moment, the loser gives up its read lock and the winner waits for
            # that instead of failing too.  A file held by a running server is refused
            # after it.
            conn = sqlite3.connect(
                where, isolation_level=None, check_same_thread=False, timeout=_OPEN_TIMEOUT
            )
        except sqlite3.Error as error:
            raise self._open_error(error) from error
        try:
            conn.text_factory = bytes
            self._configure(conn, max_bytes)
            if check_integrity:
                self._quick_check(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._prepare_schema(conn, gearmand_table)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA busy_timeout = 0")  # the lock is ours from now on
            if created:
                log.info("created job store %s", where)
            # The database and WAL files exist now: make their names durable.
            _fsync_directory(self.path.parent)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as error:
            conn.close()
            raise self._open_error(error) from error
        return conn

    def _configure(self, conn: sqlite3.Connection, max_bytes: int | None) -> None:
        # EXCLUSIVE must come before the first read: the lock is then taken and kept.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if application_id not in (0, APPLICATION_ID):
            raise StoreOpenError(
                f"{self.path}: not a gearproto job store "
                f"(SQLite application_id {application_id:#x})"
            )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != b"wal":
            raise StoreOpenError(f"{self.path}: cannot switch to WAL mode (still {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA fullfsync = ON")  # macOS: flush the drive cache too
        conn.execute("PRAGMA checkpoint_fullfsync = ON")
        # Keep the WAL from staying huge after a burst of large jobs.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA foreign_keys = OFF")
        if max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(max_bytes // page_size, 16)}")

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        results = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
        if results != [b"ok"]:
            details = "; ".join(r.decode(errors="replace") for r in results)
            raise StoreOpenError(f"{self.path}: the SQLite file is corrupt: {details}")

    def _prepare_schema(self, conn: sqlite3.Connection, gearmand_table: str | None) -> None:
        tables = {
            row[0].decode(errors="replace")
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if _SCHEMA in tables:
            self._migrate(conn)
        else:
            foreign = sorted(
                t
                for t in tables
                if t != gearmand_table and not t.startswith(("sqlite_", "gearproto_"))
            )
            if foreign:
                raise StoreOpenError(
                    f"{self.path}: holds tables that are not a job store's "
                    f"({', '.join(foreign)}); refusing to add a job store to it"
                )
            for statement in _CREATE:
                conn.execute(statement)
            conn.execute(f"INSERT INTO {_SCHEMA} (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if gearmand_table is not None and table_exists(conn, gearmand_table):
            self._import_gearmand(conn, gearmand_table)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(f"SELECT version FROM {_SCHEMA}").fetchall()
        if len(rows) != 1 or type(rows[0][0]) is not int:
            raise StoreOpenError(f"{self.path}: damaged {_SCHEMA} table ({rows!r})")
        version: int = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.path}: written by a newer gearproto (schema version {version}; "
                f"this version reads up to {SCHEMA_VERSION})"
            )
        if version < 1:
            raise StoreOpenError(f"{self.path}: unknown schema version {version}")
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](conn)
            version += 1
            conn.execute(f"UPDATE {_SCHEMA} SET version = ?", (version,))
            log.info("migrated job store %s to schema version %d", self.path, version)

    def _import_gearmand(self, conn: sqlite3.Connection, table: str) -> None:
        row = conn.execute(f"SELECT max(job_id) FROM {_JOBS}").fetchone()
        first = (row[0] or 0) + 1
        found = read_gearmand_rows(
            conn, table, first_job_id=first, limits=self.limits, source=str(self.path)
        )
        if found.bad_rows and self.bad_rows == "refuse":
            raise StoreCorruptError(
                f"{self.path}: gearmand table {table} (nothing was imported; fix or delete "
                "these rows, or start with bad rows quarantined)",
                [problem for problem, _ in found.bad_rows],
            )
        conn.executemany(_INSERT, (_row(job) for job in found.jobs))
        self._quarantine(conn, found.bad_rows)
        renamed = self._free_table_name(conn, f"{table}_imported")
        conn.execute(f'ALTER TABLE "{table}" RENAME TO "{renamed}"')
        self.imported_from_gearmand = len(found.jobs)
        log.warning(
            "imported %d jobs from gearmand table %s of %s (the table is kept as %s)",
            len(found.jobs),
            table,
            self.path,
            renamed,
        )

    @staticmethod
    def _free_table_name(conn: sqlite3.Connection, name: str) -> str:
        candidate, n = name, 1
        while table_exists(conn, candidate):
            n += 1
            candidate = f"{name}_{n}"
        return candidate

    def _quarantine(
        self, conn: sqlite3.Connection, bad: Sequence[tuple[RowProblem, tuple[object, ...]]]
    ) -> None:
        now = int(time.time())
        for problem, values in bad:
            function, unique, data, priority, when, reducer = (*values, None)[:6]
            conn.execute(
                _QUARANTINE_INSERT,
                (
                    now,
                    problem.where,
                    problem.reason,
                    function,
                    unique,
                    data,
                    priority,
                    when,
                    reducer,
                ),
            )
            log.warning("quarantined %s: %s", problem.where, problem.reason)

    def _open_error(self, error: sqlite3.Error) -> StoreOpenError:
        name = _error_name(error)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreLockedError(
                f"{self.path}: in use by another process (another job server, or a "
                "program holding the file open); a job store has one owner at a time"
            )
        if name == "SQLITE_NOTADB":
            return StoreOpenError(f"{self.path}: not a SQLite database")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            return StoreOpenError(
                f"{self.path}: cannot write the file or its directory ({error}); "
                "the job store needs both to be writable"
            )
        return StoreOpenError(f"{self.path}: cannot open the job store: {error}")

    # ------------------------------------------------------------- the interface

    def load(self) -> list[StoredJob]:
        """Every stored job, in ``job_id`` order (FIFO), priorities and ``when`` kept.

        The first call returns the jobs read and validated when the store was opened;
        later calls read the file again.

        Raises:
            StoreCorruptError: some rows are invalid and ``bad_rows`` is ``"refuse"``;
                the error names every bad row; the file is unchanged.
        """
        with self._lock:
            conn = self._connection()
            jobs, self._preloaded = self._preloaded, None
            return jobs if jobs is not None else self._read_jobs(conn)

    def _read_jobs(self, conn: sqlite3.Connection) -> list[StoredJob]:
        limits = self.limits
        try:
            (any_bad,) = conn.execute(
                _ANY_BAD,
                {
                    "function": limits.max_function,
                    "unique": limits.max_unique,
                    "data": limits.max_packet_size,
                },
            ).fetchone()
            if not any_bad:
                prio = _PRIORITIES
                return [
                    StoredJob(job_id, function, unique, data, prio[priority], when, reducer)
                    for job_id, function, unique, data, priority, when, reducer in conn.execute(
                        _SELECT
                    )
                ]
        except sqlite3.Error as error:
            raise self._failure(error, "loading the jobs") from error
        jobs: list[StoredJob] = []
        bad: list[tuple[RowProblem, tuple[object, ...]]] = []
        bad_ids: list[int] = []
        try:
            for row in conn.execute(_SELECT):
                try:
                    jobs.append(stored_job_from_values(*row, limits=self.limits))
                except InvalidJobError as error:
                    where = f"{self.path} {_JOBS} row job_id={row[0]}"
                    bad.append((RowProblem(where, str(error)), tuple(row[1:])))
                    bad_ids.append(row[0])
            if bad and self.bad_rows == "refuse":
                raise StoreCorruptError(
                    f"{self.path} (the server refuses to start rather than drop "
                    "acknowledged jobs; fix or delete these rows, or start with bad rows "
                    "quarantined)",
                    [problem for problem, _ in bad],
                )
            if bad:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._quarantine(conn, bad)
                    conn.executemany(_DELETE, ((job_id,) for job_id in bad_ids))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as error:
            raise self._failure(error, "loading the jobs") from error
        return jobs

    def apply(self, batch: StoreBatch) -> None:
        """Add and remove jobs in one transaction; durable (fsynced) when this returns.

        A job both added and removed in ``batch`` is never written.  A batch that
        changes nothing costs no commit.

        Raises:
            StoreFullError: the disk or ``max_bytes`` is full; nothing was stored and
                the store stays usable.
            StoreBrokenError: an I/O error; nothing of the batch was acknowledged by
                the store, and every later call raises this too.
            StoreError: the batch is invalid (a job id that is already stored, a field
                of the wrong type); nothing was stored.
        """
        removed = batch.removed
        try:
            if removed:
                gone = set(removed)
                added_ids = {job.job_id for job in batch.added}
                rows = [_row(job) for job in batch.added if job.job_id not in gone]
                deletes = [(index(job_id),) for job_id in gone if job_id not in added_ids]
            else:
                rows = [_row(job) for job in batch.added]
                deletes = []
        except TypeError as error:
            raise StoreError(f"{self.path}: batch {batch.batch_id} rejected: {error}") from error
        if not rows and not deletes:
            return
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                if rows:
                    conn.executemany(_INSERT, rows)
                if deletes:
                    conn.executemany(_DELETE, deletes)
                conn.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as error:
                self._rollback(conn)
                raise self._failure(error, f"storing batch {batch.batch_id}") from error
            self.commits += 1
            self._preloaded = None  # stale now: load() reads the file

    def close(self) -> None:
        """Close the file (checkpointing its WAL) and release its lock; idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "broken" if self._broken else "open"
        return f"<SQLiteStore {str(self.path)!r} {state}>"

    # ------------------------------------------------------------------ helpers

    def _connection(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise StoreBrokenError(self._broken)
        if self._conn is None:
            raise StoreError(f"{self.path}: the job store is closed")
        return self._conn

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _failure(self, error: BaseException, doing: str) -> StoreError:
        name = _error_name(error)
        if isinstance(error, OverflowError):
            return StoreError(f"{self.path}: {doing}: a number is too large to store ({error})")
        if name.startswith("SQLITE_FULL"):
            return StoreFullError(
                f"{self.path}: {doing}: the disk or the store's size cap is full; "
                "nothing of this batch was stored"
            )
        if isinstance(error, _RECOVERABLE):
            return StoreError(f"{self.path}: {doing}: rejected: {error}")
        self._broken = (
            f"{self.path}: {doing} failed ({name or type(error).__name__}: {error}); the "
            "store refuses further writes: stop the server, check the disk, and restart"
        )
        log.error("%s", self._broken)
        return StoreBrokenError(self._broken)


# Python's sqlite3 binds int, float, str and bytearray directly but sends bytes (and
# int subclasses such as Priority) through its adapter lookup, which costs about a
# microsecond per value.  Small byte strings are therefore bound as bytearray copies;
# payloads above _COPY_LIMIT as they are, where a copy would cost more than the lookup.
_COPY_LIMIT = 64 * 1024
_EMPTY = bytearray()


def _row(
    job: StoredJob,
) -> tuple[int, bytearray, bytearray, bytes | bytearray, int, int, bytearray]:
    function, unique, data, reducer = job.function, job.unique, job.data, job.reducer
    # Checked because bytearray(5) would quietly make five zero bytes of an int.
    if not (_is_bytes(function) and _is_bytes(unique) and _is_bytes(data) and _is_bytes(reducer)):
        raise TypeError(f"job {job.job_id!r}: function, unique, data and reducer must be bytes")
    return (
        index(job.job_id),
        bytearray(function),
        bytearray(unique),
        bytearray(data) if len(data) <= _COPY_LIMIT else data,
        index(job.priority),
        index(job.when),
        bytearray(reducer) if reducer else _EMPTY,
    )


def _is_bytes(value: object) -> bool:
    return isinstance(value, (bytes, bytearray))


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible on this platform (e.g. Windows)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise StoreOpenError(f"{directory}: cannot fsync the directory: {error}") from error
    finally:
        os.close(fd)
