"""TLS contexts and the admin policy on the real job server (JobServer, real sockets)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import EchoReq, EchoRes
from gearproto.server import JobServer
from gearproto.server.acl import AdminAccess, AllowList
from gearproto.server.tls import client_context, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="gearproto-server")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ops = ca.issue_cert("ops@example.invalid", common_name="ops-admin")
    ops.private_key_and_cert_chain_pem.write_to_path(str(d / "ops.pem"))
    worker = ca.issue_cert("worker@example.invalid", common_name="worker-1")
    worker.private_key_and_cert_chain_pem.write_to_path(str(d / "worker.pem"))
    return d


def tls_connect(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def echo(sock: socket.socket) -> EchoRes:
    conn = Connection(Side.CLIENT)
    sock.sendall(conn.send(EchoReq(b"ping over tls")))
    while (event := conn.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        if not data:
            conn.receive_eof()
        else:
            conn.receive_data(data)
    assert isinstance(event, EchoRes), event
    return event


def admin_line(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


@pytest.mark.timeout(60)
def test_tls_server_answers_tls_and_refuses_plaintext(pki: Path) -> None:
    with JobServer(ssl=server_context(pki / "server.pem")) as server:
        with tls_connect(server.address, client_context(pki / "ca.pem")) as tls:
            assert echo(tls).data == b"ping over tls"
        with socket.create_connection(server.address, timeout=10) as plain:
            plain.sendall(Connection(Side.CLIENT).send(EchoReq(b"plaintext?")))
            received = b""
            try:
                while chunk := plain.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
        assert b"plaintext?" not in received  # never answered in the clear
        with tls_connect(server.address, client_context(pki / "ca.pem")) as tls:
            assert echo(tls).data == b"ping over tls"  # the server is still fine


@pytest.mark.timeout(60)
def test_mutual_tls_and_admin_access_by_certificate_subject(pki: Path) -> None:
    context = server_context(pki / "server.pem", ca_file=pki / "ca.pem")
    # Allow only the ops certificate, not even loopback, so the subject is what counts.
    access = AdminAccess(replace(AllowList.parse("subject:CN=ops-admin"), local=False))
    with JobServer(ssl=context, admin_guard=access.guard) as server:
        ops = client_context(pki / "ca.pem", pki / "ops.pem")
        worker = client_context(pki / "ca.pem", pki / "worker.pem")
        with tls_connect(server.address, worker) as tls:
            refused = admin_line(tls, b"maxqueue resize 1")
            assert refused.startswith(b"ERR PERMISSION_DENIED maxqueue+")
            assert admin_line(tls, b"version").startswith(b"OK ")  # reads are open
        with tls_connect(server.address, ops) as tls:
            assert admin_line(tls, b"maxqueue resize 1") == b"OK\r\n"
        # Without a client certificate there is no session at all.
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            echo_without_certificate(server.address, pki)


def echo_without_certificate(address: tuple[str, int], pki: Path) -> None:
    with tls_connect(address, client_context(pki / "ca.pem")) as tls:
        echo(tls)
