"""The admin policy in the server core: refused commands answer ERR and change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from gearproto import NEED_DATA, Connection, Priority, Side
from gearproto.events import Error, JobCreated, SubmitJob
from gearproto.server._state import PeerInfo
from gearproto.server.acl import AdminAccess
from gearproto.server.core import ServerConfig, ServerCore

NOW = 1_000.0


class Admin:
    """A core with one client connection and admin connections from chosen hosts."""

    def __init__(self, access: AdminAccess) -> None:
        self.core = ServerCore(ServerConfig(admin_guard=access.guard))
        self.client = Connection(Side.CLIENT)
        self.core.connect("client", PeerInfo("127.0.0.1", 1, 1))
        self.next_id = 0

    def submit(self, data: bytes) -> Any:
        packet = self.client.send(SubmitJob(b"f", b"", data, Priority.NORMAL, background=True))
        self.core.receive("client", packet, NOW)
        reply = b"".join(c for t in self.core.drain() for c in t.chunks)
        self.client.receive_data(reply)
        event = self.client.next_event()
        assert event is not NEED_DATA
        return event

    def line(self, host: str, line: bytes) -> bytes:
        self.next_id += 1
        conn_id = f"admin-{self.next_id}"
        self.core.connect(conn_id, PeerInfo(host, 2, 2))
        self.core.receive(conn_id, line + b"\r\n", NOW)
        return b"".join(c for t in self.core.drain() for c in t.chunks)


@pytest.mark.parametrize("host", ["10.0.0.5", "2001:db8::7", "::ffff:192.0.2.1"])
def test_non_allowed_peers_cannot_cancel_or_cap(host: str) -> None:
    server = Admin(AdminAccess())
    created = server.submit(b"job")
    assert isinstance(created, JobCreated)
    status = server.line("127.0.0.1", b"status")
    refused = server.line(host, b"cancel job " + created.handle)
    assert refused.startswith(b"ERR PERMISSION_DENIED cancel+job+")
    refused = server.line(host, b"maxqueue f 1")
    assert refused.startswith(b"ERR PERMISSION_DENIED maxqueue+")
    for command in (b"create function g", b"drop function f"):
        assert server.line(host, command).startswith(b"ERR PERMISSION_DENIED ")
    assert server.line("127.0.0.1", b"status") == status  # the job is still there
    # no queue cap was set: more submissions are accepted
    assert all(isinstance(server.submit(b"more %d" % n), JobCreated) for n in range(3))
    # read-only commands stay open to everyone
    assert server.line(host, b"status").endswith(b".\n")


def test_local_and_listed_peers_can() -> None:
    server = Admin(AdminAccess.from_options("10.0.0.0/8"))
    created = server.submit(b"job")
    assert server.line("10.9.9.9", b"cancel job " + created.handle) == b"OK\r\n"
    assert server.line("10.9.9.9", b"maxqueue f 1") == b"OK\r\n"
    assert isinstance(server.submit(b"one"), JobCreated)
    capped = server.submit(b"two")
    assert isinstance(capped, Error)
    assert capped.code == b"QUEUE_ERROR"
    assert server.line("127.0.0.1", b"maxqueue f") == b"OK\r\n"  # loopback: still allowed
    assert isinstance(server.submit(b"three"), JobCreated)
    assert server.line("192.0.2.1", b"maxqueue f 1").startswith(b"ERR PERMISSION_DENIED")


def test_client_certificate_subjects_in_the_core() -> None:
    server = Admin(AdminAccess.from_options("subject:CN=ops-admin,O=Example"))
    created = server.submit(b"job")
    assert isinstance(created, JobCreated)
    ops = {"subject": ((("commonName", "ops-admin"),), (("organizationName", "Example"),))}
    other = {"subject": ((("commonName", "worker-7"),), (("organizationName", "Example"),))}

    def line_with_cert(cert: dict[str, Any], line: bytes) -> bytes:
        server.next_id += 1
        conn_id = f"tls-{server.next_id}"
        server.core.connect(conn_id, PeerInfo("203.0.113.5", 2, 2, cert))
        server.core.receive(conn_id, line + b"\r\n", NOW)
        return b"".join(c for t in server.core.drain() for c in t.chunks)

    assert line_with_cert(other, b"maxqueue f 1").startswith(b"ERR PERMISSION_DENIED")
    assert line_with_cert({}, b"maxqueue f 1").startswith(b"ERR PERMISSION_DENIED")
    assert line_with_cert(ops, b"cancel job " + created.handle) == b"OK\r\n"
