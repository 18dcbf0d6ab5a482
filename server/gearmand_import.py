"""Read a gearmand ``-q libsqlite3`` queue file, so an installation can switch over.

gearmand keeps its background jobs in one table (``gearman_queue`` unless
``--libsqlite3-table`` names another)::

    unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB,
    when_to_run INTEGER, PRIMARY KEY (unique_key, function_name)

Every row is validated before it is used (gearmand itself aborts its start-up on the
first row it dislikes, and cannot even replay its own rows for empty payloads, which
it stores as NULL).  Rows come back in ``rowid`` order, the order gearmand replays
them in, with new job ids so that FIFO order within each priority is kept.

Two ways to use it:

* :class:`gearproto.server.sqlite_store.SQLiteStore` imports the table in place when it
  opens a gearmand queue file (the drop-in path: point the server at gearmand's file).
* ``python -m gearproto.server.gearmand_import SOURCE DEST`` copies the jobs of a
  gearmand file into a separate job store file, leaving the source untouched.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gearproto import Limits

from .storage import (
    InvalidJobError,
    RowProblem,
    StoreBatch,
    StoreCorruptError,
    StoredJob,
    StoreError,
    StoreOpenError,
    stored_job_from_values,
)

__all__ = [
    "DEFAULT_TABLE",
    "GearmandRows",
    "check_table_name",
    "main",
    "read_gearmand_queue",
    "read_gearmand_rows",
]

#: gearmand's ``--libsqlite3-table`` default.
DEFAULT_TABLE = "gearman_queue"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_REQUIRED_COLUMNS = ("unique_key", "function_name", "priority", "data")


def check_table_name(table: str) -> str:
    """``table`` if it is a plain SQL identifier, else :class:`ValueError`.

    gearmand pastes the name into its SQL unquoted; only plain identifiers are
    accepted here, so that no table name can change a statement.
    """
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(
            f"invalid gearmand table name {table!r}: use letters, digits and '_' "
            "(at most 128, not starting with a digit)"
        )
    return table


@dataclass(frozen=True, slots=True)
class GearmandRows:
    """What :func:`read_gearmand_rows` found in a gearmand table."""

    #: The valid rows as jobs, in gearmand's replay (``rowid``) order.
    jobs: list[StoredJob]
    #: One entry per invalid row: the problem and the row's raw column values
    #: ``(function_name, unique_key, data, priority, when_to_run)``.
    bad_rows: list[tuple[RowProblem, tuple[object, ...]]]


def table_exists(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``conn``'s main database has a table named ``table``."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def read_gearmand_rows(
    conn: sqlite3.Connection,
    table: str = DEFAULT_TABLE,
    *,
    first_job_id: int = 1,
    limits: Limits | None = None,
    source: str = "",
) -> GearmandRows:
    """Read and validate every row of gearmand's ``table`` through ``conn``.

    Valid rows become :class:`StoredJob` with ids ``first_job_id, first_job_id+1, ...``
    in ``rowid`` order.  ``source`` (a file name) prefixes the row descriptions.

    Conversions: TEXT or BLOB names and payloads are taken as bytes; a NULL payload
    (how gearmand stores an empty one) is ``b""``; a NULL ``when_to_run`` (rows written
    before gearmand added the column) is 0.

    Raises:
        StoreOpenError: the table or one of its columns is missing.
    """
    check_table_name(table)
    where = f"{source} table {table}" if source else f"table {table}"
    if not table_exists(conn, table):
        raise StoreOpenError(f"{where}: no such table (is --libsqlite3-table right?)")
    columns = {_text(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')}
    missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise StoreOpenError(
            f"{where}: not a gearmand queue table (missing column {', '.join(missing)})"
        )
    when_column = "when_to_run" if "when_to_run" in columns else "NULL"
    try:
        conn.execute(f'SELECT rowid FROM "{table}" LIMIT 0')
        order, rowid = "ORDER BY rowid", "rowid"
    except sqlite3.OperationalError:  # a WITHOUT ROWID table: keep the scan order
        order, rowid = "", "NULL"
    query = (
        f"SELECT {rowid}, unique_key, typeof(unique_key), function_name, "
        f"typeof(function_name), priority, typeof(priority), data, {when_column}, "
        f'typeof({when_column}) FROM "{table}" {order}'
    )
    jobs: list[StoredJob] = []
    bad_rows: list[tuple[RowProblem, tuple[object, ...]]] = []
    job_id = first_job_id
    for index, row in enumerate(conn.execute(query)):
        (row_id, unique, unique_type, function, function_type, priority, priority_type) = row[:7]
        data, when, when_type = row[7:]
        raw = (function, unique, data, priority, when)
        label = f"rowid={row_id}" if row_id is not None else f"row #{index + 1}"
        try:
            job = stored_job_from_values(
                job_id,
                _name_value("function_name", function, function_type),
                _name_value("unique_key", unique, unique_type),
                b"" if data is None else data,
                _integer_value("priority", priority, priority_type),
                0 if when is None else _integer_value("when_to_run", when, when_type),
                limits=limits,
            )
        except InvalidJobError as error:
            problem = RowProblem(
                f"{where} {label} (function {function!r}, unique {unique!r})", str(error)
            )
            bad_rows.append((problem, raw))
            continue
        jobs.append(job)
        job_id += 1
    return GearmandRows(jobs, bad_rows)


def _name_value(column: str, value: object, sql_type: bytes | str) -> object:
    # gearmand binds names as TEXT; a BLOB holds the same bytes.  NULL is no name.
    if _type_name(sql_type) in ("text", "blob"):
        return value
    raise InvalidJobError(column, f"must be TEXT, not {_type_name(sql_type).upper()}")


def _integer_value(column: str, value: object, sql_type: bytes | str) -> object:
    if _type_name(sql_type) == "integer":
        return value
    raise InvalidJobError(
        column, f"must be an INTEGER, not {_type_name(sql_type).upper()} {value!r}"
    )


def _type_name(sql_type: bytes | str) -> str:
    return _text(sql_type)


def _text(value: bytes | str) -> str:
    # Connections may read TEXT as bytes (the stores do, to keep names byte-exact).
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def read_gearmand_queue(
    path: str | os.PathLike[str],
    table: str = DEFAULT_TABLE,
    *,
    first_job_id: int = 1,
    limits: Limits | None = None,
) -> list[StoredJob]:
    """Every job in the gearmand queue file ``path``, validated, in replay order.

    The file is not changed (a hot journal left by a crashed gearmand is rolled back
    by SQLite, as gearmand itself would).

    Raises:
        StoreOpenError: the file is missing, not a SQLite database, or has no such
            table or columns.
        StoreCorruptError: rows fail validation; the error names every bad row.
    """
    check_table_name(table)
    source = os.fspath(path)
    if not Path(source).is_file():
        raise StoreOpenError(f"{source}: no such file")
    try:
        conn = sqlite3.connect(f"file:{quote(source)}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as error:
        raise StoreOpenError(f"{source}: cannot open: {error}") from error
    try:
        conn.text_factory = bytes
        rows = read_gearmand_rows(
            conn, table, first_job_id=first_job_id, limits=limits, source=source
        )
    except sqlite3.DatabaseError as error:
        raise StoreOpenError(f"{source}: cannot read a gearmand queue: {error}") from error
    finally:
        conn.close()
    if rows.bad_rows:
        raise StoreCorruptError(source, [problem for problem, _ in rows.bad_rows])
    return rows.jobs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gearproto.server.gearmand_import SOURCE DEST``: copy gearmand's jobs."""
    parser = argparse.ArgumentParser(
        prog="python -m gearproto.server.gearmand_import",
        description="Copy the background jobs of a gearmand -q libsqlite3 queue file into "
        "a gearproto job store file (created if missing). The source is not changed; "
        "stop gearmand first so that no job is added to it meanwhile.",
    )
    parser.add_argument("source", help="gearmand's --libsqlite3-db file")
    parser.add_argument("dest", help="the gearproto job store file")
    parser.add_argument(
        "--libsqlite3-table",
        default=DEFAULT_TABLE,
        help=f"gearmand's table name (default {DEFAULT_TABLE})",
    )
    args = parser.parse_args(argv)
    from .sqlite_store import SQLiteStore  # here: sqlite_store imports this module

    try:
        check_table_name(args.libsqlite3_table)
        with SQLiteStore(args.dest, gearmand_table=None) as store:
            existing = store.load()
            first = max((job.job_id for job in existing), default=0) + 1
            jobs = read_gearmand_queue(args.source, args.libsqlite3_table, first_job_id=first)
            store.apply(StoreBatch(1, added=jobs))
    except (StoreError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"imported {len(jobs)} jobs from {args.source} into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
