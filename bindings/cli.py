"""``gearproto submit | worker | admin``: what gearmand's ``gearman`` and ``gearadmin`` do.

Exit status: 0 success; 1 the job failed, raised, or the server answered ERR; 2 bad
usage; 3 no server reachable or connection lost; 4 a timeout ran out.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from gearproto import LocalProtocolError, admin

from ._outcomes import (
    Abandoned,
    Accepted,
    AdminCommandError,
    Completed,
    ConnectError,
    ConnectionLost,
    Disconnected,
    ExceptionRaised,
    Failed,
    Rejected,
    RequestTimeout,
    TimedOut,
)
from ._routing import DEFAULT_PORT, ServerAddress, parse_address
from ._tls import TLSConfigError, tls_context

__all__ = ["admin_main", "submit_main", "worker_main"]

EXIT_OK, EXIT_JOB, EXIT_USAGE, EXIT_CONNECT, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and never prints a traceback."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("servers")
    group.add_argument("-h", "--host", help="job server host (default: localhost)")
    group.add_argument("-p", "--port", type=int, help=f"job server port (default: {DEFAULT_PORT})")
    group.add_argument(
        "-s",
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a job server; repeat for several (default: $GEARMAN_SERVER or localhost:4730)",
    )
    tls = parser.add_argument_group(
        "TLS", "the server's certificate and host name are verified unless --ssl-no-verify"
    )
    tls.add_argument("-S", "--ssl", action="store_true", help="connect with TLS")
    tls.add_argument(
        "--ssl-ca-file", metavar="FILE", help="CAs to verify the server with (implies --ssl)"
    )
    tls.add_argument(
        "--ssl-certificate",
        metavar="FILE",
        help="client certificate for mutual TLS, PEM (implies --ssl)",
    )
    tls.add_argument("--ssl-key", metavar="FILE", help="the client certificate's private key, PEM")
    tls.add_argument(
        "--ssl-no-verify",
        action="store_true",
        help="do not authenticate the server (encrypted only; implies --ssl)",
    )
    parser.add_argument("--help", action="help", help="show this help and exit")


def _ssl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ssl.SSLContext | None:
    """The TLS context the options ask for; None for plaintext.  Bad files exit 2."""
    wanted = args.ssl or args.ssl_ca_file or args.ssl_certificate or args.ssl_no_verify
    if args.ssl_key and not args.ssl_certificate:
        parser.error("--ssl-key needs --ssl-certificate")
    if not wanted:
        return None
    if args.ssl_no_verify and args.ssl_ca_file:
        parser.error("--ssl-no-verify and --ssl-ca-file contradict each other")
    try:
        return tls_context(
            args.ssl_ca_file,
            args.ssl_certificate,
            args.ssl_key,
            verify=not args.ssl_no_verify,
        )
    except TLSConfigError as exc:
        parser.error(str(exc))


def _servers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[ServerAddress]:
    try:
        if args.server:
            return [parse_address(s) for s in args.server]
        if args.host or args.port:
            return [ServerAddress(args.host or "localhost", args.port or DEFAULT_PORT)]
        env = os.environ.get("GEARMAN_SERVER")
        if env:
            return [parse_address(s) for s in env.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    return [ServerAddress("localhost", DEFAULT_PORT)]


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _fail(message: str, status: int) -> int:
    print(f"gearproto: {message}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------- submit


def submit_main(argv: Sequence[str]) -> int:
    """``gearproto submit -f FUNCTION [DATA ...]``: run a job, print its result."""
    parser = _Parser(prog="gearproto submit", add_help=False, description=submit_main.__doc__)
    _server_options(parser)
    parser.add_argument("-f", "--function", required=True, help="function name")
    parser.add_argument("-u", "--unique", help="unique id (jobs with equal ids coalesce)")
    parser.add_argument("-b", "--background", action="store_true", help="background job")
    prio = parser.add_mutually_exclusive_group()
    prio.add_argument("-I", "--high", action="store_true", help="high priority")
    prio.add_argument("-L", "--low", action="store_true", help="low priority")
    parser.add_argument("--epoch", type=float, help="do not run before this Unix time")
    parser.add_argument(
        "-n", "--lines", action="store_true", help="one job per line of standard input"
    )
    parser.add_argument("-t", "--timeout", type=float, help="seconds to wait for the result")
    parser.add_argument(
        "--no-stdin", action="store_true", help="send empty data when no DATA is given"
    )
    parser.add_argument("data", nargs="*", help="job data (default: standard input)")
    args = parser.parse_args(argv)
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be a positive number of seconds")
    servers = _servers(args, parser)
    context = _ssl(args, parser)
    if args.data:
        payloads = [" ".join(args.data).encode()]
    elif args.no_stdin:
        payloads = [b""]
    else:
        raw = sys.stdin.buffer.read()
        payloads = raw.splitlines() if args.lines else [raw]
    priority = "high" if args.high else "low" if args.low else "normal"

    from .sync import Client

    status = EXIT_OK
    with Client(servers, timeout=args.timeout, ssl=context) as client:
        try:
            jobs = [
                client.submit(
                    args.function,
                    payload,
                    unique=args.unique,
                    priority=priority,
                    background=args.background or args.epoch is not None,
                    epoch=args.epoch,
                )
                for payload in payloads
            ]
        except (ValueError, LocalProtocolError) as exc:
            parser.error(str(exc))
        for job in jobs:
            for update in job:
                if type(update).__name__ == "WorkData":
                    _write(update.data)  # type: ignore[union-attr]
            status = max(status, _report(job.outcome))
    return status


def _report(outcome: Any) -> int:
    match outcome:
        case Completed(data=data):
            _write(data)
            return EXIT_OK
        case Accepted(handle=handle):
            _write(b"Task created: " + handle + b"\n")
            return EXIT_OK
        case ExceptionRaised(data=data):
            return _fail(f"job raised: {data.decode(errors='replace')}", EXIT_JOB)
        case Failed():
            return _fail("job failed", EXIT_JOB)
        case Rejected(code=code, text=text):
            return _fail(f"job refused: {code.decode()} {text.decode(errors='replace')}", EXIT_JOB)
        case TimedOut(phase=phase, seconds=seconds):
            return _fail(f"timed out after {seconds:g} s waiting for {phase}", EXIT_TIMEOUT)
        case Disconnected(reason=reason):
            return _fail(reason, EXIT_CONNECT)
        case Abandoned():
            return _fail("job abandoned", EXIT_JOB)
    return _fail(f"unexpected outcome {outcome!r}", EXIT_JOB)


# --------------------------------------------------------------------------- worker


def worker_main(argv: Sequence[str]) -> int:
    """``gearproto worker -f FUNCTION [-- COMMAND ...]``: run a command for every job.

    The job's data is the command's standard input and its standard output is the
    result; a non-zero exit fails the job (WORK_EXCEPTION with the error output).
    Without a command, the data is sent back as the result.  SIGTERM drains.
    """
    parser = _Parser(prog="gearproto worker", add_help=False, description=worker_main.__doc__)
    _server_options(parser)
    parser.add_argument(
        "-f", "--function", action="append", required=True, help="function (repeatable)"
    )
    parser.add_argument("-c", "--count", type=int, help="exit after this many jobs")
    parser.add_argument("-j", "--concurrency", type=int, default=1, help="jobs at once")
    parser.add_argument("-t", "--timeout", type=float, help="seconds a job may run")
    parser.add_argument("--client-id", help="id shown by the admin 'workers' command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run per job")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    servers = _servers(args, parser)
    context = _ssl(args, parser)
    # Connection failures (refused, TLS, ...) are logged: a worker retries for ever.
    logging.basicConfig(format="gearproto worker: %(message)s", level=logging.WARNING)

    from .sync import Worker, WorkerJob, WorkException

    worker = Worker(servers, concurrency=args.concurrency, client_id=args.client_id, ssl=context)
    done = [0]
    lock = threading.Lock()

    def run(job: WorkerJob) -> bytes:
        try:
            if not command:
                return job.data
            proc = subprocess.run(
                command, input=job.data, capture_output=True, timeout=args.timeout, check=False
            )
            if proc.returncode != 0:
                raise WorkException(proc.stderr or f"exit status {proc.returncode}".encode())
            return proc.stdout
        finally:
            with lock:
                done[0] += 1
                if args.count is not None and done[0] >= args.count:
                    worker.drain()

    for function in args.function:
        worker.register(function, run)
    try:
        worker.work(handle_signals=True)
    except FileNotFoundError as exc:
        return _fail(str(exc), EXIT_USAGE)
    return EXIT_OK


# ---------------------------------------------------------------------------- admin

_ADMIN_FLAGS: list[tuple[str, str, Any]] = [
    ("--status", "status of every function", admin.Status),
    ("--priority-status", "queued jobs per priority", admin.PriorityStatus),
    ("--workers", "connected workers and their functions", admin.Workers),
    ("--server-version", "the server's version", admin.Version),
    ("--server-verbose", "the server's log level", admin.Verbose),
    ("--getpid", "the server's process id", admin.GetPid),
    ("--show-jobs", "every job", admin.ShowJobs),
    ("--show-unique-jobs", "every job's unique id", admin.ShowUniqueJobs),
]


def admin_main(argv: Sequence[str]) -> int:
    """``gearproto admin --status`` and the other gearadmin commands."""
    parser = _Parser(prog="gearproto admin", add_help=False, description=admin_main.__doc__)
    _server_options(parser)
    for flag, help_, _ in _ADMIN_FLAGS:
        parser.add_argument(flag, action="store_true", help=help_)
    parser.add_argument("--cancel-job", metavar="HANDLE", help="remove a queued job")
    parser.add_argument("--create-function", metavar="FUNCTION", help="create a function")
    parser.add_argument("--drop-function", metavar="FUNCTION", help="drop a function")
    parser.add_argument(
        "--max-queue",
        nargs="+",
        metavar=("FUNCTION", "LIMIT"),
        help="set queue limits: FUNCTION [N | HIGH NORMAL [LOW]]",
    )
    parser.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds per reply")
    args = parser.parse_args(argv)
    commands: list[admin.AdminCommand] = []
    for flag, _, factory in _ADMIN_FLAGS:
        if getattr(args, flag[2:].replace("-", "_")):
            commands.append(factory())
    try:
        if args.cancel_job:
            commands.append(admin.CancelJob(args.cancel_job.encode()))
        if args.create_function:
            commands.append(admin.CreateFunction(args.create_function.encode()))
        if args.drop_function:
            commands.append(admin.DropFunction(args.drop_function.encode()))
        if args.max_queue:
            limits = tuple(int(v) for v in args.max_queue[1:])
            commands.append(admin.MaxQueue(args.max_queue[0].encode(), limits))
        for command in commands:
            admin.format_command(command)  # validates the arguments
    except (ValueError, LocalProtocolError) as exc:
        parser.error(str(exc))
    if not commands:
        parser.error("no command given (try --status)")
    (server, *rest) = _servers(args, parser)
    if rest:
        parser.error("admin talks to one server at a time")
    context = _ssl(args, parser)

    from .sync import Admin

    status = EXIT_OK
    with Admin(server, timeout=args.timeout, ssl=context) as client:
        for command in commands:
            try:
                reply = client.command(command)
            except AdminCommandError as exc:
                status = _fail(f"server answered: {exc}", EXIT_JOB)
                continue
            except ConnectError as exc:
                return _fail(str(exc), EXIT_CONNECT)
            except ConnectionLost as exc:
                return _fail(str(exc), EXIT_CONNECT)
            except RequestTimeout as exc:
                return _fail(str(exc), EXIT_TIMEOUT)
            _write(_format(reply))
    return status


def _format(reply: Any) -> bytes:
    """gearadmin's output: listings as the server sent them, ``OK`` values alone."""
    if isinstance(reply, admin.AdminOk):
        return (reply.value if reply.value is not None else b"OK") + b"\n"
    return admin.format_reply(reply)


def main() -> NoReturn:  # pragma: no cover - convenience for ``python -m``
    sys.exit(submit_main(sys.argv[1:]))
