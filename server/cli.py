"""``gearproto server`` / ``python -m gearproto.server``: gearmand's command line.

Options keep gearmand's names so that an init script or a test harness written for
gearmand starts this server unchanged; the ones that make no sense here are accepted
and ignored (``-t``, ``-R``, ``--hashtable-buckets``), and the rest refused with a
clear message.  Binds 127.0.0.1 unless ``-L`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from gearproto._version import __version__

from ._server import JobServer, new_event_loop
from .core import ServerConfig
from .storage import JobStore

__all__ = ["build_parser", "main"]

log = logging.getLogger("gearproto.server")

_LEVELS = {
    "FATAL": logging.CRITICAL,
    "ALERT": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": logging.INFO,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}
_MEMORY_QUEUES = ("builtin", "memory", "none")
_SQLITE_QUEUES = ("libsqlite3", "sqlite", "sqlite3")


class UsageError(Exception):
    """A bad command line: printed as one message, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int_in(low: int, high: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return convert


def _level(text: str) -> str:
    name = text.upper()
    if name not in _LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r} (choose from {', '.join(_LEVELS)})"
        )
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gearproto server",
        description="Run the gearproto job server (gearmand-compatible options).",
    )
    add = parser.add_argument
    add("-L", "--listen", action="append", metavar="ADDR",
        help="address to listen on (repeatable; default 127.0.0.1)")  # fmt: skip
    add("-p", "--port", type=_int_in(0, 65535), metavar="PORT",
        help="TCP port (default 4730, or $GEARMAND_PORT)")  # fmt: skip
    add("-j", "--job-retries", type=_int_in(-1, 2**31 - 1), default=0, metavar="N",
        help="drop a job with WORK_FAIL at its N-th requeue; 0 or -1: never")  # fmt: skip
    add("-w", "--worker-wakeup", type=_int_in(0, 2**31 - 1), default=0, metavar="N",
        help="NOOPs sent per new job; 0 wakes every sleeping worker (default 0)")  # fmt: skip
    add("--job-handle-prefix", metavar="PREFIX",
        help="gearmand-style handles PREFIX:<n> (default: unguessable random handles)")  # fmt: skip
    add("--exceptions", action="store_true",
        help="forward WORK_EXCEPTION to every client")  # fmt: skip
    add("-q", "--queue-type", default="builtin", metavar="TYPE",
        help="job store: builtin (memory) or libsqlite3")  # fmt: skip
    add("--libsqlite3-db", metavar="FILE", help="SQLite file of the libsqlite3 queue")
    add("--libsqlite3-table", metavar="TABLE", default="gearman_queue",
        help="gearmand queue table to import from the SQLite file")  # fmt: skip
    add("--store-queue-on-shutdown", action="store_true",
        help="accepted for gearmand compatibility; every job is stored at once anyway")  # fmt: skip
    add("-l", "--log-file", default="stderr", metavar="FILE",
        help="log file, or 'stderr' (default) or 'none'")  # fmt: skip
    add("--verbose", type=_level, default="ERROR", metavar="LEVEL",
        help="log level: " + ", ".join(_LEVELS) + " (default ERROR)")  # fmt: skip
    add("-b", "--backlog", type=_int_in(1, 65535), default=32, metavar="N",
        help="listen backlog (default 32)")  # fmt: skip
    add("--keepalive", action="store_true", help="enable TCP keepalive")
    add("--keepalive-idle", type=_int_in(-1, 2**31 - 1), default=-1, metavar="SEC")
    add("--keepalive-interval", type=_int_in(-1, 2**31 - 1), default=-1, metavar="SEC")
    add("--keepalive-count", type=_int_in(-1, 2**31 - 1), default=-1, metavar="N")
    add("-P", "--pid-file", metavar="FILE", help="write the process id to FILE")
    add("-t", "--threads", type=_int_in(0, 2**31 - 1), metavar="N",
        help="accepted for gearmand compatibility (the server is one event loop)")  # fmt: skip
    add("-R", "--round-robin", action="store_true",
        help="accepted for gearmand compatibility (rotation is always on)")  # fmt: skip
    add("--hashtable-buckets", type=_int_in(1, 2**31 - 1), metavar="N",
        help="accepted for gearmand compatibility")  # fmt: skip
    add("--loop", choices=("auto", "asyncio", "uvloop", "trio"), default="auto",
        help="event loop: uvloop when installed (auto), asyncio, or trio")  # fmt: skip
    add("--check-args", action="store_true", help="check the options and exit")
    add("-V", "--version", action="store_true", help="print the version and exit")
    return parser


def _setup_logging(log_file: str, level: str) -> None:
    logger = logging.getLogger("gearproto")
    logger.setLevel(_LEVELS[level])
    if log_file == "none":
        logger.addHandler(logging.NullHandler())
        return
    handler: logging.Handler
    if log_file == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise UsageError(f"cannot open log file {log_file!r}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)


def _open_store(args: argparse.Namespace) -> JobStore | None:
    queue = args.queue_type.lower()
    if queue in _MEMORY_QUEUES:
        if args.libsqlite3_db:
            raise UsageError("--libsqlite3-db needs -q libsqlite3")
        return None
    if queue in _SQLITE_QUEUES:
        if not args.libsqlite3_db:
            raise UsageError("-q libsqlite3 needs --libsqlite3-db FILE")
        try:
            from .sqlite_store import SQLiteStore
        except ImportError:  # pragma: no cover - part of the distribution
            raise UsageError("the SQLite job store is not available in this build") from None
        from .storage import StoreError

        try:
            store: JobStore = SQLiteStore(args.libsqlite3_db, gearmand_table=args.libsqlite3_table)
        except (StoreError, ValueError) as exc:
            raise UsageError(f"cannot open the job store: {exc}") from None
        return store
    raise UsageError(f"unknown queue type {args.queue_type!r} (choose builtin or libsqlite3)")


def _config(args: argparse.Namespace) -> ServerConfig:
    prefix = None
    if args.job_handle_prefix is not None:
        prefix = args.job_handle_prefix.encode()
        text = args.job_handle_prefix
        if not prefix or len(prefix) > 40 or not text.isascii() or not text.isprintable():
            raise UsageError("--job-handle-prefix must be 1..40 printable ASCII characters")
        if any(c in prefix for c in b" \t%"):
            raise UsageError("--job-handle-prefix must not contain spaces, tabs or '%'")
    return ServerConfig(
        job_retries=args.job_retries,
        worker_wakeup=args.worker_wakeup,
        exceptions=args.exceptions,
        job_handle_prefix=prefix,
        verbose=args.verbose.encode(),
    )


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        port: int = args.port
        return port
    env = os.environ.get("GEARMAND_PORT")
    if env:
        try:
            return int(_int_in(1, 65535)(env))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"GEARMAND_PORT: {exc}") from None
    return 4730


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the exit status (2 for a bad command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            print(f"gearproto server {__version__}")
            return 0
        config = _config(args)
        port = _port(args)
        hosts = args.listen or ["127.0.0.1"]
        if args.check_args:
            return 0
        _setup_logging(args.log_file, args.verbose)
        store = _open_store(args)
    except UsageError as exc:
        print(f"gearproto server: {exc}", file=sys.stderr)
        print("Try 'gearproto server --help' for the options.", file=sys.stderr)
        return 2
    keepalive = None
    if args.keepalive:
        keepalive = (args.keepalive_idle, args.keepalive_interval, args.keepalive_count)
    server = JobServer(
        hosts if len(hosts) > 1 else hosts[0],
        port,
        config=config,
        store=store,
        backlog=args.backlog,
        keepalive=keepalive,
    )
    try:
        if args.loop == "trio":
            import trio

            trio.run(_serve_trio, server, args.pid_file)
        else:
            loop = asyncio.new_event_loop() if args.loop == "asyncio" else new_event_loop()
            try:
                loop.run_until_complete(_serve_asyncio(server, args.pid_file))
            finally:
                loop.close()
    except OSError as exc:
        print(f"gearproto server: cannot listen on {hosts} port {port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the loop
        return 0
    finally:
        if args.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(args.pid_file)
    return 0


def _write_pid(pid_file: str | None) -> None:
    if pid_file:
        with open(pid_file, "w") as out:
            out.write(f"{os.getpid()}\n")


async def _serve_asyncio(server: JobServer, pid_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    # Handlers go in before the port opens, so that a signal sent as soon as the
    # server accepts connections is never lost (it is replayed once running).
    requested: list[bool] = []

    def on_signal(graceful: bool) -> None:
        requested.append(graceful)
        server.stop(graceful=graceful)

    loop.add_signal_handler(signal.SIGTERM, on_signal, False)
    loop.add_signal_handler(signal.SIGINT, on_signal, False)
    loop.add_signal_handler(signal.SIGUSR1, on_signal, True)
    loop.add_signal_handler(signal.SIGHUP, _reopen_logs)
    async with server:
        if requested:
            server.stop(graceful=all(requested))
        _write_pid(pid_file)
        log.info("listening on %s", server.addresses)
        await server.serve_forever()


async def _serve_trio(server: JobServer, pid_file: str | None) -> None:
    import trio

    with trio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP
    ) as signals:
        async with server:
            _write_pid(pid_file)
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            server.stop(graceful=True)
                        elif signum == signal.SIGHUP:
                            _reopen_logs()
                        else:
                            server.stop()

                nursery.start_soon(watch)
                await server.serve_forever()
                nursery.cancel_scope.cancel()


def _reopen_logs() -> None:
    for handler in logging.getLogger("gearproto").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()  # reopened on the next record
