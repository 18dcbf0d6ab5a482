"""Pieces of the public API that every binding shares (argument handling, admin table)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from gearproto import Limits, admin
from gearproto.events import EchoReq, GetStatus, GetStatusUnique

from ._client_engine import ClientOptions
from ._routing import Backoff, ServerAddress, ServerSpec, parse_address, parse_servers
from ._tls import SSLOption, resolve_ssl
from ._worker_engine import WorkerOptions

__all__ = [
    "ADMIN_COMMANDS",
    "client_options",
    "echo_event",
    "status_event",
    "status_unique_event",
]


def client_options(
    *,
    connect_timeout: float | None,
    created_timeout: float | None,
    timeout: float | None,
    max_attempts: int,
    exceptions: bool,
    client_id: bytes | str | None,
    backoff: Backoff | None,
    limits: Limits | None,
    ssl: SSLOption = None,
) -> ClientOptions:
    cid = client_id.encode() if isinstance(client_id, str) else client_id
    return ClientOptions(
        connect_timeout=connect_timeout,
        created_timeout=created_timeout,
        timeout=timeout,
        max_attempts=max_attempts,
        exceptions=exceptions,
        client_id=cid,
        backoff=backoff or Backoff(),
        limits=limits,
        ssl_context=resolve_ssl(ssl),
    )


def worker_options(
    *,
    concurrency: int,
    client_id: bytes | str | None,
    connect_timeout: float | None,
    backoff: Backoff | None,
    limits: Limits | None,
    ssl: SSLOption,
) -> WorkerOptions:
    return WorkerOptions(
        concurrency=concurrency,
        client_id=client_id.encode() if isinstance(client_id, str) else client_id,
        connect_timeout=connect_timeout,
        backoff=backoff or Backoff(),
        limits=limits,
        ssl_context=resolve_ssl(ssl),
    )


def servers_list(servers: ServerSpec | Iterable[ServerSpec]) -> list[ServerAddress]:
    return parse_servers(servers)


def server_address(server: ServerSpec | None) -> ServerAddress | None:
    return None if server is None else parse_address(server)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def echo_event(data: bytes | str) -> EchoReq:
    return EchoReq(_bytes(data))


def status_event(handle: bytes | str) -> GetStatus:
    return GetStatus(_bytes(handle))


def status_unique_event(unique: bytes | str) -> GetStatusUnique:
    return GetStatusUnique(_bytes(unique))


def make_rng(seed: int | None) -> random.Random:
    return random.Random(seed)


#: method name -> builder of the admin command (every command gearadmin knows, and more).
ADMIN_COMMANDS: dict[str, Any] = {
    "workers": admin.Workers,
    "status": admin.Status,
    "priority_status": admin.PriorityStatus,
    "show_jobs": admin.ShowJobs,
    "show_unique_jobs": admin.ShowUniqueJobs,
    "getpid": admin.GetPid,
    "verbose": admin.Verbose,
    "version": admin.Version,
}


def cancel_job_command(handle: bytes | str) -> admin.CancelJob:
    return admin.CancelJob(_bytes(handle))


def create_function_command(function: bytes | str) -> admin.CreateFunction:
    return admin.CreateFunction(_bytes(function))


def drop_function_command(function: bytes | str) -> admin.DropFunction:
    return admin.DropFunction(_bytes(function))


def max_queue_command(function: bytes | str, *limits: int) -> admin.MaxQueue:
    return admin.MaxQueue(_bytes(function), tuple(limits))
