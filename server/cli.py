"""``gearproto server`` / ``python -m gearproto.server``: gearmand's command line.

Options keep gearmand's names so that an init script or a test harness written for
gearmand starts this server unchanged; the ones that make no sense here are accepted
and ignored (``-t``, ``-R``, ``--hashtable-buckets``), and the rest refused with a
clear message.  Binds 127.0.0.1 unless ``-L`` says otherwise.

Unlike gearmand, the defaults are the safe ones: background jobs go to a durable
SQLite queue (``-q builtin`` keeps them in memory), every input and resource limit is
on, and mutating admin commands are accepted from local peers only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gearproto import Limits
from gearproto._version import __version__

from ._server import JobServer, new_event_loop
from .acl import AdminAccess, AllowListError
from .core import ServerConfig
from .storage import JobStore
from .tls import TLSConfigError, server_tls_from_options

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


_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(low: int, high: int) -> Any:
    """A byte count: ``65536``, ``64K``, ``64M``, ``1G`` (binary units)."""

    def convert(text: str) -> int:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a size (a whole number of bytes, or with K, M or G)"
            )
        value = int(match.group(1)) * _UNITS[match.group(2).lower()]
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low}..{high} bytes")
        return value

    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 10**8:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..100000000 seconds")
    return value


def default_queue_file(port: int) -> Path:
    """Where the durable queue lives when no ``--libsqlite3-db`` is given.

    ``$XDG_STATE_HOME/gearproto/queue-<port>.sqlite`` (``~/.local/state`` when the
    variable is unset): one file per port, so that two servers on one machine never
    share a queue, and a restarted server finds its jobs again.
    """
    state = os.environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "gearproto" / f"queue-{port}.sqlite"


_DEFAULTS = ServerConfig()
_DEFAULT_LIMITS = Limits()


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
    add("-q", "--queue-type", default="libsqlite3", metavar="TYPE",
        help="job store: libsqlite3 (durable, the default) or builtin (memory only)")  # fmt: skip
    add("--libsqlite3-db", metavar="FILE",
        help="SQLite file of the durable queue (default "
             "$XDG_STATE_HOME/gearproto/queue-PORT.sqlite)")  # fmt: skip
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
    limits = parser.add_argument_group("input and resource limits (0: no limit, where noted)")
    add = limits.add_argument
    add("--max-packet-size", type=_size(64, 2**32 - 1), default=_DEFAULT_LIMITS.max_packet_size,
        metavar="SIZE", help="largest packet body, checked on the size a header declares "
                             "(default 64M)")  # fmt: skip
    add("--max-argument-size", type=_size(64, 2**31), default=_DEFAULT_LIMITS.max_text,
        metavar="SIZE", help="longest text argument: client id, option name, reduce "
                             "aggregator (default 8K)")  # fmt: skip
    add("--max-function-size", type=_size(1, 2**20), default=_DEFAULT_LIMITS.max_function,
        metavar="SIZE", help="longest function name (default 512)")  # fmt: skip
    add("--max-unique-size", type=_size(1, 2**20), default=_DEFAULT_LIMITS.max_unique,
        metavar="SIZE", help="longest unique id (default 64)")  # fmt: skip
    add("--max-handle-size", type=_size(32, 2**20), default=_DEFAULT_LIMITS.max_handle,
        metavar="SIZE", help="longest job handle a peer may send (default 64)")  # fmt: skip
    add("--max-line-size", type=_size(64, 2**24), default=_DEFAULT_LIMITS.max_line,
        metavar="SIZE", help="longest admin command line (default 8K)")  # fmt: skip
    add("--partial-packet-timeout", type=_seconds, default=_DEFAULTS.partial_timeout,
        metavar="SEC", help="seconds a packet, admin line or TLS handshake may take from "
                            "its first byte to its last; 0: none (default 60)")  # fmt: skip
    add("--idle-timeout", type=_seconds, default=_DEFAULTS.idle_timeout, metavar="SEC",
        help="seconds a connection that holds no work may stay silent; 0: none "
             "(default 300)")  # fmt: skip
    add("--max-connections", type=_int_in(0, 2**31 - 1), default=_DEFAULTS.max_connections,
        metavar="N", help="connections at once; more get an ERROR and are closed; 0: none "
                          "(default 10000)")  # fmt: skip
    add("--output-pause-size", type=_size(4096, 2**40), default=_DEFAULTS.output_pause,
        metavar="SIZE", help="unsent output to a connection at which the server stops "
                             "reading from it (default 1M)")  # fmt: skip
    add("--max-output-size", type=_size(0, 2**40), default=0, metavar="SIZE",
        help="unsent output at which a connection that does not read is dropped "
             "(default: twice --max-packet-size plus --output-pause-size)")  # fmt: skip
    add("--max-queued-jobs", type=_int_in(0, 2**62), default=_DEFAULTS.max_queued_jobs,
        metavar="N", help="jobs held at once (queued, scheduled, running); more get "
                          "ERROR QUEUE_ERROR; 0: none (default 1000000)")  # fmt: skip
    add("--max-queued-bytes", type=_size(0, 2**62), default=_DEFAULTS.max_queued_bytes,
        metavar="SIZE", help="payload and unique-id bytes of the jobs held; beyond it "
                             "ERROR QUEUE_ERROR; 0: none (default 1G)")  # fmt: skip

    security = parser.add_argument_group("security")
    add = security.add_argument
    add("--ssl", action="store_true", help="serve TLS only (TLS 1.2+)")
    add("--ssl-certificate", metavar="FILE", help="server certificate chain (PEM)")
    add("--ssl-key", metavar="FILE",
        help="server private key (PEM); not needed if the certificate file holds it")  # fmt: skip
    add("--ssl-ca-file", metavar="FILE",
        help="CAs for client certificates (PEM); makes client certificates mandatory")  # fmt: skip
    add("--admin-allow", action="append", metavar="LIST",
        help="who may run mutating admin commands: addresses, networks, subject:CN=..., "
             "local, any, none (default: local)")  # fmt: skip
    add("--admin-read-allow", action="append", metavar="LIST",
        help="who may run read-only admin commands (default: any)")  # fmt: skip

    add = parser.add_argument
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


def _check_queue(args: argparse.Namespace) -> None:
    queue = args.queue_type.lower()
    if queue in _MEMORY_QUEUES:
        if args.libsqlite3_db:
            raise UsageError("--libsqlite3-db needs -q libsqlite3 (the default queue)")
    elif queue not in _SQLITE_QUEUES:
        raise UsageError(f"unknown queue type {args.queue_type!r} (choose libsqlite3 or builtin)")


def _open_store(args: argparse.Namespace, port: int, limits: Limits) -> JobStore | None:
    if args.queue_type.lower() in _MEMORY_QUEUES:
        return None
    path = args.libsqlite3_db
    if not path:
        if port == 0:
            log.warning(
                "port 0 (a new port at every start): no default queue file, jobs are kept "
                "in memory; give --libsqlite3-db FILE to make them durable"
            )
            return None
        default = default_queue_file(port)
        try:
            default.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the queue directory {default.parent}: {exc.strerror}; "
                "give --libsqlite3-db FILE, or -q builtin for a memory queue"
            ) from None
        path = str(default)
    try:
        from .sqlite_store import SQLiteStore
    except ImportError:  # pragma: no cover - part of the distribution
        raise UsageError("the SQLite job store is not available in this build") from None
    from .storage import StoreError

    try:
        store: JobStore = SQLiteStore(path, limits=limits, gearmand_table=args.libsqlite3_table)
    except (StoreError, ValueError) as exc:
        raise UsageError(f"cannot open the job store: {exc}") from None
    log.info("durable queue: %s", path)
    return store


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(
        max_packet_size=args.max_packet_size,
        max_function=args.max_function_size,
        max_unique=args.max_unique_size,
        max_handle=args.max_handle_size,
        max_line=args.max_line_size,
        max_text=args.max_argument_size,
    )


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plaintext; TLSConfigError if unusable."""
    tls = server_tls_from_options(
        ssl=args.ssl,
        ssl_certificate=args.ssl_certificate,
        ssl_key=args.ssl_key,
        ssl_ca_file=args.ssl_ca_file,
    )
    return None if tls is None else tls.context()


def _config(args: argparse.Namespace) -> ServerConfig:
    prefix = None
    if args.job_handle_prefix is not None:
        prefix = args.job_handle_prefix.encode()
        text = args.job_handle_prefix
        if not prefix or len(prefix) > 40 or not text.isascii() or not text.isprintable():
            raise UsageError("--job-handle-prefix must be 1..40 printable ASCII characters")
        if any(c in prefix for c in b" \t%"):
            raise UsageError("--job-handle-prefix must not contain spaces, tabs or '%'")
    try:
        access = AdminAccess.from_options(args.admin_allow, args.admin_read_allow)
    except AllowListError as exc:
        raise UsageError(str(exc)) from None
    limits = _limits(args)
    try:
        return ServerConfig(
            job_retries=args.job_retries,
            worker_wakeup=args.worker_wakeup,
            exceptions=args.exceptions,
            job_handle_prefix=prefix,
            verbose=args.verbose.encode(),
            limits=limits,
            admin_guard=access.guard,
            partial_timeout=args.partial_packet_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_queued_jobs=args.max_queued_jobs,
            max_queued_bytes=args.max_queued_bytes,
            output_pause=args.output_pause_size,
            max_output=args.max_output_size,
        )
    except ValueError as exc:
        text = str(exc).replace("ServerConfig.max_output", "--max-output-size")
        raise UsageError(text.replace("output_pause", "--output-pause-size")) from None


def _raise_fd_limit(connections: int) -> None:
    """Raise the soft open-files limit so that ``connections`` sockets fit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on this platform
        return
    wanted = connections + 64 if connections else 65536
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if connections and soft < wanted:
        log.warning(
            "open-files limit %d is below --max-connections %d: connections beyond it are "
            "refused by the operating system",
            soft,
            connections,
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
        _check_queue(args)
    except UsageError as exc:
        print(f"gearproto server: {exc}", file=sys.stderr)
        print("Try 'gearproto server --help' for the options.", file=sys.stderr)
        return 2
    try:
        # Fail closed: a TLS option that cannot be honoured stops the server here,
        # before anything listens, and nothing is ever served in plaintext instead.
        tls = _tls_context(args)
    except TLSConfigError as exc:
        print(f"gearproto server: TLS: {exc}", file=sys.stderr)
        return 1
    if args.check_args:
        return 0
    try:
        _setup_logging(args.log_file, args.verbose)
    except UsageError as exc:
        print(f"gearproto server: {exc}", file=sys.stderr)
        return 2
    try:
        store = _open_store(args, port, config.limits)
    except UsageError as exc:
        print(f"gearproto server: {exc}", file=sys.stderr)
        return 1
    _raise_fd_limit(config.max_connections)
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
        ssl=tls,
        # The daemon's loop runs nothing but the server: it may wait for its
        # connections itself (see AsyncioRunner.wait_budget).
        own_waits=True,
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
