"""TLS contexts from gearmand's options: real handshakes on loopback sockets, fail-closed errors.

Certificates are made at test time with trustme (a throw-away CA).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from gearproto import Connection, Side
from gearproto.events import EchoReq
from gearproto.server.tls import (
    ServerTLS,
    TLSConfigError,
    client_context,
    format_subject,
    server_context,
    server_tls_from_options,
    subject_from_peercert,
)

ECHO = Connection(Side.CLIENT).send(EchoReq(b"over tls"))


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    server_combined: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    rogue_ca: Path
    encrypted_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="Example")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="gearproto-server")
    client = ca.issue_cert(
        "ops@example.invalid", common_name="ops-admin", organization_name="Example"
    )
    rogue_ca = trustme.CA()
    rogue = rogue_ca.issue_cert("ops@example.invalid", common_name="ops-admin")
    paths = Pki(
        d,
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "server-combined.pem",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "rogue.key",
        d / "rogue-ca.pem",
        d / "encrypted.key",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    rogue_ca.cert_pem.write_to_path(str(paths.rogue_ca))
    for leaf, cert, key in (
        (server, paths.server_cert, paths.server_key),
        (client, paths.client_cert, paths.client_key),
        (rogue, paths.rogue_cert, paths.rogue_key),
    ):
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths.server_combined))
    private_key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    paths.encrypted_key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    return paths


@dataclass
class Outcome:
    """What the server saw of one connection."""

    subject: tuple[tuple[str, str], ...] | None = None
    version: str | None = None
    error: BaseException | None = None


@dataclass
class EchoServer:
    """A TLS listener on 127.0.0.1 that echoes the first bytes each client sends."""

    context: ssl.SSLContext
    sock: socket.socket = field(init=False)
    outcomes: list[Outcome] = field(default_factory=list)
    done: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            outcome = Outcome()
            conn.settimeout(10)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    outcome.subject = subject_from_peercert(tls.getpeercert())
                    outcome.version = tls.version()
                    data = tls.recv(4096)
                    tls.sendall(data)
            except (OSError, ssl.SSLError) as error:
                outcome.error = error
            finally:
                conn.close()
            self.outcomes.append(outcome)
            self.done.release()

    def last(self) -> Outcome:
        assert self.done.acquire(timeout=10), "the server did not finish the connection"
        return self.outcomes[-1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def serve() -> Iterator[list[EchoServer]]:
    servers: list[EchoServer] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[EchoServer], context: ssl.SSLContext) -> EchoServer:
    server = EchoServer(context)
    servers.append(server)
    return server


def tls_echo(port: int, context: ssl.SSLContext, hostname: str = "localhost") -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        tls.sendall(ECHO)
        return tls.recv(4096)


# -------------------------------------------------------------- handshakes


def test_tls_handshake_and_echo(pki: Pki, serve: list[EchoServer]) -> None:
    server = start(serve, server_context(pki.server_cert, pki.server_key))
    assert tls_echo(server.port, client_context(pki.ca)) == ECHO
    outcome = server.last()
    assert outcome.error is None
    assert outcome.version in ("TLSv1.2", "TLSv1.3")
    assert outcome.subject is None  # no client certificate asked for without a CA file


def test_key_inside_the_certificate_file(pki: Pki, serve: list[EchoServer]) -> None:
    server = start(serve, server_context(pki.server_combined))
    assert tls_echo(server.port, client_context(pki.ca)) == ECHO


def test_encrypted_key_with_its_password(pki: Pki, serve: list[EchoServer]) -> None:
    context = server_context(pki.server_cert, pki.encrypted_key, key_password="s3cret")
    server = start(serve, context)
    assert tls_echo(server.port, client_context(pki.ca)) == ECHO


def test_plain_client_is_refused_by_a_tls_listener(pki: Pki, serve: list[EchoServer]) -> None:
    server = start(serve, server_context(pki.server_cert, pki.server_key))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        plain.sendall(ECHO)
        received = b""
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert ECHO not in received  # never answered in plaintext
    assert isinstance(server.last().error, ssl.SSLError)


def test_mutual_tls(pki: Pki, serve: list[EchoServer]) -> None:
    server = start(serve, server_context(pki.server_cert, pki.server_key, pki.ca))
    client = client_context(pki.ca, pki.client_cert, pki.client_key)
    assert tls_echo(server.port, client) == ECHO
    outcome = server.last()
    assert outcome.error is None
    assert outcome.subject is not None
    assert ("CN", "ops-admin") in outcome.subject
    assert ("O", "Example") in outcome.subject


@pytest.mark.parametrize("which", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    pki: Pki, serve: list[EchoServer], which: str
) -> None:
    server = start(serve, server_context(pki.server_cert, pki.server_key, pki.ca))
    if which == "no certificate":
        client = client_context(pki.ca)
    else:
        client = client_context(pki.ca, pki.rogue_cert, pki.rogue_key)
    try:
        reply = tls_echo(server.port, client)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        reply = b""
    assert reply == b""  # TLS 1.3 reports the refusal at the first read, 1.2 in the handshake
    outcome = server.last()
    assert isinstance(outcome.error, ssl.SSLError)
    assert outcome.subject is None


def test_clients_verify_the_server_by_default(pki: Pki, serve: list[EchoServer]) -> None:
    server = start(serve, server_context(pki.server_cert, pki.server_key))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        tls_echo(server.port, client_context())  # the system CAs do not know ours
    server.last()
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        tls_echo(server.port, client_context(pki.rogue_ca))
    server.last()
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_echo(server.port, client_context(pki.ca), hostname="other.example")
    server.last()
    # Turning verification off is explicit, and still encrypted.
    assert tls_echo(server.port, client_context(verify=False), hostname="x") == ECHO


def test_tls_below_1_2_is_refused(pki: Pki, serve: list[EchoServer]) -> None:
    context = server_context(pki.server_cert, pki.server_key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    server = start(serve, context)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # that is the point: an old, deprecated protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_echo(server.port, old)
    assert isinstance(server.last().error, ssl.SSLError)


# ------------------------------------------------------------ fail closed


def _bad_files(pki: Pki) -> list[tuple[str, dict[str, object], str]]:
    junk = pki.dir / "junk.pem"
    junk.write_text("not a pem file\n")
    empty = pki.dir / "empty.pem"
    empty.write_text("")
    return [
        ("missing cert", {"certificate": pki.dir / "nope.pem"},
         "--ssl-certificate .*nope.pem: no such file"),
        ("cert is a dir", {"certificate": pki.dir}, "is a directory"),
        ("cert not pem", {"certificate": junk, "key": pki.server_key},
         "junk.pem: not a PEM certificate"),
        ("key missing", {"key": pki.dir / "nokey.pem"}, "--ssl-key .*nokey.pem: no such file"),
        ("key not pem", {"key": junk}, "--ssl-key .*junk.pem: not a PEM private key"),
        ("key mismatch", {"key": pki.client_key}, "client.key does not match the certificate"),
        ("no key at all", {"key": None}, "holds no private key: give --ssl-key"),
        ("encrypted key", {"key": pki.encrypted_key}, "encrypted and no password was given"),
        ("wrong password", {"key": pki.encrypted_key, "key_password": "nope"}, "cannot decrypt"),
        ("ca missing", {"ca_file": pki.dir / "noca.pem"}, "--ssl-ca-file .*noca.pem: no such file"),
        ("ca not pem", {"ca_file": junk}, "--ssl-ca-file .*junk.pem: no PEM certificate"),
        ("ca empty", {"ca_file": empty}, "--ssl-ca-file .*empty.pem: no PEM certificate"),
    ]  # fmt: skip


BAD_CASES = [
    "missing cert", "cert is a dir", "cert not pem", "key missing", "key not pem",
    "key mismatch", "no key at all", "encrypted key", "wrong password", "ca missing",
    "ca not pem", "ca empty",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_raise_a_clear_error(pki: Pki, case: str) -> None:
    name, override, message = next(c for c in _bad_files(pki) if c[0] == case)
    args: dict[str, object] = {"certificate": pki.server_cert, "key": pki.server_key}
    args.update(override)
    with pytest.raises(TLSConfigError, match=message):
        server_context(**args)  # type: ignore[arg-type]
    assert name == case


def test_unreadable_file(pki: Pki, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pki.server_cert.read_bytes())
    locked.chmod(0)
    try:
        try:
            locked.read_bytes()
        except PermissionError:
            with pytest.raises(TLSConfigError, match=r"locked\.pem: permission denied"):
                server_context(locked, pki.server_key)
        else:  # root reads anything: the same check must then pass
            assert server_context(locked, pki.server_key) is not None
    finally:
        locked.chmod(0o600)


def test_client_side_errors(pki: Pki) -> None:
    with pytest.raises(TLSConfigError, match="key was given without its certificate"):
        client_context(pki.ca, key=pki.client_key)
    with pytest.raises(TLSConfigError, match=r"CA file .*junk: no such file"):
        client_context(pki.dir / "junk")
    with pytest.raises(TLSConfigError, match="does not match"):
        client_context(pki.ca, pki.client_cert, pki.server_key)


# ------------------------------------------------------------------ options


def test_options_like_gearmand(pki: Pki) -> None:
    assert server_tls_from_options(ssl=False) is None
    tls = server_tls_from_options(
        ssl=True, ssl_certificate=str(pki.server_cert), ssl_key=str(pki.server_key)
    )
    assert tls == ServerTLS(pki.server_cert, pki.server_key, None)
    assert not tls.mutual
    assert tls.context().verify_mode == ssl.CERT_NONE
    mutual = server_tls_from_options(
        ssl=True,
        ssl_certificate=pki.server_cert,
        ssl_key=pki.server_key,
        ssl_ca_file=pki.ca,
    )
    assert mutual is not None
    assert mutual.mutual
    assert mutual.context().verify_mode == ssl.CERT_REQUIRED


def test_options_fail_closed(pki: Pki) -> None:
    with pytest.raises(TLSConfigError, match="--ssl needs --ssl-certificate"):
        server_tls_from_options(ssl=True)
    with pytest.raises(TLSConfigError, match="--ssl-certificate, --ssl-key given without --ssl"):
        server_tls_from_options(ssl=False, ssl_certificate="a.pem", ssl_key="a.key")
    with pytest.raises(TLSConfigError, match="--ssl-ca-file given without --ssl"):
        server_tls_from_options(ssl=False, ssl_ca_file=pki.ca)
    with pytest.raises(TLSConfigError, match="--ssl-key is empty"):
        server_tls_from_options(ssl=True, ssl_certificate=pki.server_cert, ssl_key="")


def test_subjects() -> None:
    assert subject_from_peercert(None) is None
    assert subject_from_peercert({}) is None
    cert = {
        "subject": (
            (("commonName", "ops, admin"),),
            (("organizationName", "Example"), ("organizationalUnitName", "Ops")),
            (("1.2.3.4", "x\\y"),),
        )
    }
    subject = subject_from_peercert(cert)
    assert subject == (("CN", "ops, admin"), ("O", "Example"), ("OU", "Ops"), ("1.2.3.4", "x\\y"))
    assert format_subject(subject) == "CN=ops\\, admin,O=Example,OU=Ops,1.2.3.4=x\\\\y"
