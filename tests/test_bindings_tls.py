"""TLS on every binding and in the command line, with certificates made at test time.

The job server sits behind a TLS-terminating relay whose context comes from
:func:`gearproto.server.tls.server_context` (mutual TLS when given a CA file).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.bindings import Harness
from helpers.procs import ServerProcess
from helpers.tls_relay import TLSRelay, tls_relay

from gearproto.bindings._outcomes import ConnectError, ConnectionLost, Disconnected
from gearproto.bindings.sync import Client, TLSConfigError, tls_context
from gearproto.server.tls import server_context

pytestmark = pytest.mark.timeout(60)


@dataclass
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    #: Issued by the same CA for another host name only.
    other_host_cert: Path
    other_host_key: Path
    client_cert: Path
    client_key: Path


def _write(blob: Any, path: Path) -> Path:
    blob.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("other.example")
    client = ca.issue_cert("client-1", common_name="client-1")
    return PKI(
        ca=_write(ca.cert_pem, directory / "ca.pem"),
        server_cert=_write(server.cert_chain_pems[0], directory / "server.pem"),
        server_key=_write(server.private_key_pem, directory / "server.key"),
        other_host_cert=_write(other.cert_chain_pems[0], directory / "other.pem"),
        other_host_key=_write(other.private_key_pem, directory / "other.key"),
        client_cert=_write(client.cert_chain_pems[0], directory / "client.pem"),
        client_key=_write(client.private_key_pem, directory / "client.key"),
    )


@pytest.fixture
def tls_server(job_server: ServerProcess, pki: PKI) -> Iterator[TLSRelay]:
    """The job server behind TLS (server certificate for 127.0.0.1 and localhost)."""
    with tls_relay(job_server.address, server_context(pki.server_cert, pki.server_key)) as relay:
        yield relay


@pytest.fixture
def mutual_tls_server(job_server: ServerProcess, pki: PKI) -> Iterator[TLSRelay]:
    """The job server behind TLS that requires a client certificate from the CA."""
    context = server_context(pki.server_cert, pki.server_key, pki.ca)
    with tls_relay(job_server.address, context) as relay:
        yield relay


def reverse(job: Any) -> bytes:
    return bytes(job.data[::-1])


def _root(error: BaseException | None) -> BaseException | None:
    """The single server's own error inside a ConnectError."""
    if isinstance(error, ConnectError):
        (error,) = error.causes.values()
    return error


# ------------------------------------------------------------------------- bindings


def test_client_worker_and_admin_over_tls(harness: Harness, tls_server: TLSRelay, pki: PKI) -> None:
    context = harness.module.tls_context(ca_file=pki.ca)
    harness.worker(tls_server.address, {"rev": reverse}, ssl=context).start()
    client = harness.client(tls_server.address, ssl=context)
    assert client.call("rev", b"encrypted") == b"detpyrcne"
    jobs = [client.submit("rev", b"%d" % i) for i in range(200)]
    assert [job.result() for job in jobs] == [(b"%d" % i)[::-1] for i in range(200)]
    admin = harness.admin(tls_server.address, ssl=context)
    row = next(r for r in admin.status().rows if r.function == b"rev")
    assert row.workers >= 1
    assert tls_server.sessions >= 3  # worker, client and admin all came through TLS


def test_server_certificate_is_verified_by_default(
    harness: Harness, tls_server: TLSRelay, job_server: ServerProcess, pki: PKI
) -> None:
    # ssl=True trusts the system's CAs only: the test CA's certificate is refused.
    client = harness.client(tls_server.address, ssl=True)
    with pytest.raises(ConnectError, match="certificate") as refused:
        client.echo(b"x", timeout=10)
    cause = _root(refused.value)
    assert isinstance(cause, ssl.SSLCertVerificationError)
    outcome = client.submit("rev", b"x").wait()
    assert isinstance(outcome, Disconnected)
    assert not outcome.acknowledged
    assert isinstance(_root(outcome.cause), ssl.SSLCertVerificationError)
    admin = harness.admin(tls_server.address, ssl=True)
    with pytest.raises(ConnectError, match="certificate"):
        admin.status()
    # The right CA, but a certificate for another host name: refused as well.
    other = server_context(pki.other_host_cert, pki.other_host_key)
    with tls_relay(job_server.address, other) as relay:
        trusting = harness.client(relay.address, ssl=harness.module.tls_context(pki.ca))
        with pytest.raises(ConnectError) as mismatch:
            trusting.echo(b"x", timeout=10)
        cause = _root(mismatch.value)
        assert isinstance(cause, ssl.SSLCertVerificationError)
        assert "mismatch" in str(cause)
        # Turning verification off is explicit, and then the connection works.
        blind = harness.client(relay.address, ssl=harness.module.tls_context(verify=False))
        assert blind.echo(b"unauthenticated") == b"unauthenticated"


def test_mutual_tls(harness: Harness, mutual_tls_server: TLSRelay, pki: PKI) -> None:
    context = harness.module.tls_context(pki.ca, pki.client_cert, pki.client_key)
    harness.worker(mutual_tls_server.address, {"rev": reverse}, ssl=context).start()
    client = harness.client(mutual_tls_server.address, ssl=context)
    assert client.call("rev", b"mutual") == b"lautum"
    names = [pair for subject in mutual_tls_server.peer_subjects for rdn in subject for pair in rdn]
    assert ("commonName", "client-1") in names
    # Without a client certificate the server ends the session: a clear TLS error.
    anonymous = harness.client(
        mutual_tls_server.address,
        ssl=harness.module.tls_context(pki.ca),
        max_attempts=1,
        exceptions=False,  # nothing sent before the echo: it is what gets refused
    )
    with pytest.raises((ConnectError, ConnectionLost)) as refused:
        anonymous.echo(b"x", timeout=10)
    message = str(refused.value)
    if harness.name == "sync" or "Reset" not in message:
        # The server's alert says why (the blocking binding reads it even after a
        # failed write; the async ones see a reset instead when their write of the
        # request meets the closed connection before they read the alert).
        assert "certificate" in message.lower()
        assert "SSLError" in message


def test_plaintext_client_gets_a_clear_error_from_a_tls_port(
    harness: Harness, tls_server: TLSRelay
) -> None:
    # exceptions=False: nothing is sent on connect, so the echo is what meets the TLS port.
    client = harness.client(tls_server.address, max_attempts=1, exceptions=False)
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        client.echo(b"in the clear", timeout=10)
    assert time.monotonic() - started < 10


def test_tls_settings_are_checked_up_front(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="no such file"):
        tls_context(ca_file=tmp_path / "missing.pem")
    with pytest.raises(TLSConfigError, match="without its certificate"):
        tls_context(pki.ca, key=pki.client_key)
    with pytest.raises(TLSConfigError, match="does not match"):
        tls_context(pki.ca, pki.client_cert, pki.server_key)
    with pytest.raises(TypeError, match="ssl="):
        Client("127.0.0.1:1", ssl="yes")  # type: ignore[arg-type]
    context = tls_context(pki.ca)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


# ----------------------------------------------------------------------- command line


def gearproto(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gearproto", *argv],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_command_line_over_tls(tls_server: TLSRelay, pki: PKI) -> None:
    port = str(tls_server.port)
    trust = ["--ssl-ca-file", str(pki.ca)]
    command = ["-f", "upper", "-c", "1", "--", "tr", "a-z", "A-Z"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "gearproto", "worker", "-p", port, *trust, *command]
    )
    try:
        out = gearproto("submit", "-p", port, "--ssl-ca-file", str(pki.ca), "-f", "upper", "tls")
        assert (out.returncode, out.stdout) == (0, b"TLS")
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
    out = gearproto("admin", "-p", port, "--ssl-ca-file", str(pki.ca), "--status")
    assert out.returncode == 0
    assert b"upper\t0\t0\t" in out.stdout
    # Verified by default: the system's CAs do not know the test CA.
    out = gearproto("submit", "-p", port, "--ssl", "-f", "upper", "x")
    assert out.returncode == 3
    assert b"certificate" in out.stderr
    assert b"Traceback" not in out.stderr
    out = gearproto("admin", "-p", port, "-S", "--getpid")
    assert out.returncode == 3
    assert b"certificate" in out.stderr
    # Skipping authentication has to be asked for.
    out = gearproto("admin", "-p", port, "--ssl-no-verify", "--getpid")
    assert (out.returncode, out.stdout.strip().isdigit()) == (0, True)
    out = gearproto(
        "admin", "-p", port, "--ssl-no-verify", "--ssl-ca-file", str(pki.ca), "--status"
    )
    assert out.returncode == 2
    assert b"contradict" in out.stderr
    # Bad TLS files are usage errors, before any connection.
    out = gearproto("submit", "-p", port, "--ssl-ca-file", "/nonexistent/ca.pem", "-f", "f", "x")
    assert out.returncode == 2
    assert b"/nonexistent/ca.pem: no such file" in out.stderr
    out = gearproto("admin", "-p", port, "--ssl-key", str(pki.client_key), "--status")
    assert out.returncode == 2
    assert b"--ssl-key needs --ssl-certificate" in out.stderr


def test_command_line_mutual_tls_and_worker_errors(mutual_tls_server: TLSRelay, pki: PKI) -> None:
    port = str(mutual_tls_server.port)
    identity = ["--ssl-ca-file", str(pki.ca), "--ssl-certificate", str(pki.client_cert)]
    identity += ["--ssl-key", str(pki.client_key)]
    out = gearproto("admin", "-p", port, *identity, "--status")
    assert out.returncode == 0
    assert out.stdout.endswith(b".\n")
    # A worker that cannot connect says why (it keeps retrying, so stop it).
    worker = subprocess.Popen(
        [sys.executable, "-m", "gearproto", "worker", "-p", port, "--ssl", "-f", "never"],
        stderr=subprocess.PIPE,
    )
    try:
        assert worker.stderr is not None
        line = worker.stderr.readline()
        assert b"certificate" in line
        assert str(mutual_tls_server.port).encode() in line
    finally:
        worker.terminate()
        worker.wait(10)
        if worker.stderr is not None:
            worker.stderr.close()
