"""TLS and admin access through the real ``gearproto server`` process.

Certificates are made at test time with trustme.  Peers that are not allowed to run
mutating admin commands are real connections from other loopback addresses
(127.0.0.2, 127.0.0.3: Linux routes all of 127.0.0.0/8 to the loopback interface),
with an allow-list that names one of them and leaves the local peers out.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.procs import ServerProcess, free_port, start_process

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import EchoReq, EchoRes, Error, JobCreated, SubmitJob

pytestmark = pytest.mark.timeout(90)

SERVER = [sys.executable, "-m", "gearproto.server", "-p", "{port}", "-q", "builtin"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="gearproto-server")
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("ops@example.invalid", common_name="ops-admin")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    other = trustme.CA()  # a CA the server does not trust
    stranger = other.issue_cert("mallory@example.invalid", common_name="mallory")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(d / "stranger.pem"))
    return d


@contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[ServerProcess]:
    proc = start_process([*SERVER, *args], log=tmp_path / "server.log")
    try:
        yield proc
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in (tmp_path / "server.log").read_text()


def client_context(pki: Path, certificate: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if certificate is not None:
        context.load_cert_chain(str(pki / certificate))
    return context


@contextmanager
def tls_socket(address: tuple[str, int], context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        yield sock


def request(sock: socket.socket, event: Any) -> Any:
    conn = Connection(Side.CLIENT)
    sock.sendall(conn.send(event))
    while (reply := conn.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        if not data:
            conn.receive_eof()
        else:
            conn.receive_data(data)
    return reply


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    except ssl.SSLError as error:  # the server's alert, e.g. certificate required
        received += repr(error).encode()
    return received


# ------------------------------------------------------------------------- TLS


def test_tls_server_serves_tls_and_refuses_plaintext(tmp_path: Path, pki: Path) -> None:
    tls = ["--ssl", "--ssl-certificate", str(pki / "server.crt"),
           "--ssl-key", str(pki / "server.key")]  # fmt: skip
    with server(tmp_path, *tls) as proc:
        context = client_context(pki)
        with tls_socket(proc.address, context) as sock:
            assert request(sock, EchoReq(b"over tls")) == EchoRes(b"over tls")
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
        with socket.create_connection(proc.address, timeout=10) as plain:
            plain.sendall(Connection(Side.CLIENT).send(EchoReq(b"in the clear?")))
            received = read_until_closed(plain)
        assert b"in the clear?" not in received
        assert b"\0RES" not in received  # never a Gearman reply without TLS
        # The server is still fine for TLS clients.
        with tls_socket(proc.address, context) as sock:
            assert request(sock, EchoReq(b"again")) == EchoRes(b"again")


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path, pki: Path) -> None:
    tls = ["--ssl", "--ssl-certificate", str(pki / "server.crt"), "--ssl-key",
           str(pki / "server.key"), "--ssl-ca-file", str(pki / "ca.pem")]  # fmt: skip
    with server(tmp_path, *tls) as proc:
        with tls_socket(proc.address, client_context(pki, "client.pem")) as sock:
            assert request(sock, EchoReq(b"mutual")) == EchoRes(b"mutual")
        for certificate in (None, "stranger.pem"):
            with socket.create_connection(proc.address, timeout=10) as raw:
                context = client_context(pki, certificate)
                try:
                    with context.wrap_socket(raw, server_hostname="localhost") as sock:
                        # TLS 1.3 reports the refusal on the first read (or just ends).
                        sock.sendall(Connection(Side.CLIENT).send(EchoReq(b"who am I")))
                        received = read_until_closed(sock)
                except (ssl.SSLError, ConnectionError) as error:
                    received = repr(error).encode()
                assert b"\0RES" not in received, certificate


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [a.replace("{port}", str(free_port())) for a in SERVER]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ssl", "--ssl-certificate", "{pki}/missing.crt", "--ssl-key", "{pki}/server.key"],
         "--ssl-certificate {pki}/missing.crt: no such file"),
        (["--ssl", "--ssl-certificate", "{pki}/server.crt", "--ssl-key", "{pki}/ca.pem"],
         "--ssl-key"),
        (["--ssl", "--ssl-certificate", "{pki}", "--ssl-key", "{pki}/server.key"],
         "is a directory"),
        (["--ssl", "--ssl-certificate", "{pki}/server.crt", "--ssl-key", "{pki}/server.key",
          "--ssl-ca-file", "{pki}/nope.pem"], "--ssl-ca-file {pki}/nope.pem: no such file"),
        (["--ssl"], "--ssl needs --ssl-certificate"),
        (["--ssl-certificate", "{pki}/server.crt"], "given without --ssl"),
    ],
)  # fmt: skip
def test_bad_tls_settings_refuse_to_start(pki: Path, args: list[str], message: str) -> None:
    result = run_server(*(a.replace("{pki}", str(pki)) for a in args))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # one clear line
    assert lines[0].startswith("gearproto server: TLS: ")
    assert message.replace("{pki}", str(pki)) in lines[0]


# ------------------------------------------------------------------ admin access


def connect_from(address: tuple[str, int], source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


def admin(sock: socket.socket, line: bytes) -> bytes:
    """Send an admin line; its reply: one line, or a listing up to its ``.`` line."""
    sock.sendall(line + b"\r\n")
    reply = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return reply
        reply += chunk
        if reply.startswith((b"OK", b"ERR")) and reply.endswith(b"\n"):
            return reply
        if reply == b".\n" or reply.endswith(b"\n.\n"):
            return reply


def test_mutating_admin_commands_only_from_allowed_peers(tmp_path: Path) -> None:
    # Only 127.0.0.2 may change things: not even the other loopback addresses.
    with (
        server(tmp_path, "--admin-allow", "none,127.0.0.2") as proc,
        socket.create_connection(proc.address, timeout=10) as client,
    ):
        created = request(client, SubmitJob(b"resize", b"", b"img", background=True))
        assert isinstance(created, JobCreated)
        with connect_from(proc.address, "127.0.0.3") as stranger:
            before = admin(stranger, b"status")
            assert before == b"resize\t1\t0\t0\n.\n"  # reads are open to everyone
            refused = admin(stranger, b"cancel job " + created.handle)
            assert refused.startswith(b"ERR PERMISSION_DENIED cancel+job+is+only+allowed")
            refused = admin(stranger, b"maxqueue resize 1")
            assert refused.startswith(b"ERR PERMISSION_DENIED maxqueue+is+only+allowed")
            # Nothing changed: the job is there, and the queue takes more jobs.
            assert admin(stranger, b"status") == before
            more = request(client, SubmitJob(b"resize", b"", b"img 2", background=True))
            assert isinstance(more, JobCreated)
            with socket.create_connection(proc.address, timeout=10) as local:
                assert admin(local, b"maxqueue resize 1").startswith(b"ERR PERMISSION")
        with connect_from(proc.address, "127.0.0.2") as allowed:
            assert admin(allowed, b"cancel job " + created.handle) == b"OK\r\n"
            assert admin(allowed, b"status") == b"resize\t1\t0\t0\n.\n"
            assert admin(allowed, b"maxqueue resize 1") == b"OK\r\n"
            capped = request(client, SubmitJob(b"resize", b"", b"img 3", background=True))
            assert isinstance(capped, Error)
            assert capped.code == b"QUEUE_ERROR"


def test_read_only_admin_commands_can_be_restricted(tmp_path: Path) -> None:
    with server(tmp_path, "--admin-read-allow", "none,127.0.0.2") as proc:
        with connect_from(proc.address, "127.0.0.3") as stranger:
            assert admin(stranger, b"workers").startswith(b"ERR PERMISSION_DENIED workers+")
            # The default mutating list (local peers) is not widened by the read list.
            assert admin(stranger, b"maxqueue f 1") == b"OK\r\n"
        with connect_from(proc.address, "127.0.0.2") as allowed:
            assert admin(allowed, b"workers").endswith(b".\n")


def test_default_policy_allows_local_peers(tmp_path: Path) -> None:
    with server(tmp_path) as proc:
        for source in ("127.0.0.1", "127.0.0.9"):
            with connect_from(proc.address, source) as local:
                assert admin(local, b"maxqueue f 1") == b"OK\r\n"
                assert admin(local, b"create function g") == b"OK\r\n"
