"""TLS for the job server and its clients, from gearmand's option names; fails closed.

The server side takes gearmand's options: ``--ssl`` turns TLS on, ``--ssl-certificate``
and ``--ssl-key`` name the server's PEM certificate (chain) and private key, and
``--ssl-ca-file`` names the CAs whose client certificates are accepted.  With a CA
file, every client must present a certificate signed by one of them (mutual TLS).

Everything is the stdlib :mod:`ssl` module: TLS 1.2 and 1.3 only, OpenSSL's default
ciphers and security level.  Nothing falls back to plaintext: a TLS option without
``--ssl``, ``--ssl`` without a certificate, or a certificate, key or CA file that is
missing, unreadable, not PEM, encrypted without a password, or not matching, raises
:class:`TLSConfigError` with a message that names the option and the file.  The
server must treat it as fatal (exit non-zero), never serve without TLS.

Client contexts verify the server's certificate and host name by default (against
the system's CAs, or ``ca_file``); turning verification off takes an explicit
``verify=False``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

__all__ = [
    "ServerTLS",
    "Subject",
    "TLSConfigError",
    "client_context",
    "format_subject",
    "server_context",
    "server_tls_from_options",
    "subject_from_peercert",
]

#: A certificate subject as ``(attribute, value)`` pairs, attribute names short and
#: upper-case (``CN``, ``O``, ``OU``, ``C``, ``ST``, ``L``, ``DC``, ``EMAIL``), in the
#: certificate's order, e.g. ``(("CN", "worker-1"), ("O", "Example"))``.
Subject: TypeAlias = tuple[tuple[str, str], ...]

#: Long attribute names (as in :meth:`ssl.SSLSocket.getpeercert`) to short ones.
ATTRIBUTE_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "emailAddress": "EMAIL",
    "serialNumber": "SERIALNUMBER",
    "userId": "UID",
}


class TLSConfigError(Exception):
    """A TLS setting cannot be used; the server must refuse to start (fail closed)."""


def _fail(message: str) -> NoReturn:
    raise TLSConfigError(message)


# ------------------------------------------------------------------------ files


def _read(option: str, path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        _fail(f"{option} {os.fspath(path)}: no such file")
    except IsADirectoryError:
        _fail(f"{option} {os.fspath(path)}: is a directory, not a PEM file")
    except PermissionError:
        _fail(f"{option} {os.fspath(path)}: permission denied")
    except OSError as error:
        _fail(f"{option} {os.fspath(path)}: cannot read: {error.strerror or error}")


def _has_key(pem: bytes) -> bool:
    return b"PRIVATE KEY-----" in pem


def _is_encrypted(pem: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def _load_identity(
    context: ssl.SSLContext,
    certificate: str | os.PathLike[str],
    key: str | os.PathLike[str] | None,
    password: str | bytes | None,
    cert_option: str,
    key_option: str,
) -> None:
    """Load a certificate chain and its key into ``context``, with clear errors."""
    cert_pem = _read(cert_option, certificate)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        _fail(f"{cert_option} {os.fspath(certificate)}: not a PEM certificate")
    if key is None:
        key_pem, key_label = cert_pem, f"{cert_option} {os.fspath(certificate)}"
        if not _has_key(key_pem):
            _fail(f"{cert_option} {os.fspath(certificate)} holds no private key: give {key_option}")
    else:
        key_pem, key_label = _read(key_option, key), f"{key_option} {os.fspath(key)}"
        if not _has_key(key_pem):
            _fail(f"{key_label}: not a PEM private key")
    if _is_encrypted(key_pem) and password is None:
        _fail(f"{key_label}: the key is encrypted and no password was given")

    def no_password() -> NoReturn:  # never let OpenSSL prompt on a terminal
        _fail(f"{key_label}: the key is encrypted and no password was given")

    try:
        context.load_cert_chain(
            certificate, key, password=password if password is not None else no_password
        )
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            _fail(
                f"{key_label} does not match the certificate in "
                f"{cert_option} {os.fspath(certificate)}"
            )
        if password is not None and _is_encrypted(key_pem):
            _fail(f"{key_label}: cannot decrypt the key (wrong password?)")
        _fail(
            f"cannot load {cert_option} {os.fspath(certificate)} with {key_label}: "
            f"{error.reason or error}"
        )


def _load_cas(context: ssl.SSLContext, ca_file: str | os.PathLike[str], option: str) -> None:
    pem = _read(option, ca_file)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        _fail(f"{option} {os.fspath(ca_file)}: no PEM certificate in it")
    try:
        context.load_verify_locations(cafile=os.fspath(ca_file))
    except ssl.SSLError as error:
        _fail(f"{option} {os.fspath(ca_file)}: cannot load the CA certificates: {error.reason}")


# --------------------------------------------------------------------- contexts


def server_context(
    certificate: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    *,
    key_password: str | bytes | None = None,
) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+, this certificate; with ``ca_file``, mutual TLS.

    ``key`` may be omitted when ``certificate`` holds the key too.  With ``ca_file``,
    clients must present a certificate that chains to one of its CAs
    (``CERT_REQUIRED``); without it, client certificates are not asked for.

    Raises:
        TLSConfigError: a file is missing, unreadable, not PEM, encrypted without
            ``key_password``, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, certificate, key, key_password, "--ssl-certificate", "--ssl-key")
    if ca_file is not None:
        _load_cas(context, ca_file, "--ssl-ca-file")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    ca_file: str | os.PathLike[str] | None = None,
    certificate: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    key_password: str | bytes | None = None,
    check_hostname: bool = True,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client-side context: TLS 1.2+, verifying the server by default.

    The server's certificate must chain to ``ca_file``'s CAs (the system's CAs when
    None) and, with ``check_hostname``, name the host connected to (pass it as
    ``server_hostname``).  ``certificate``/``key`` are the client's own, for servers
    that require mutual TLS.  ``verify=False`` turns all checks off: the connection is
    then encrypted but not authenticated.

    Raises:
        TLSConfigError: as for :func:`server_context`, or a key without its
            certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        _load_cas(context, ca_file, "CA file")
    if certificate is not None:
        _load_identity(context, certificate, key, key_password, "certificate", "key")
    elif key is not None:
        _fail("a client key was given without its certificate")
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = check_hostname
    return context


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """The server's TLS settings, checked and ready to build a context from."""

    certificate: Path
    key: Path | None = None
    ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate."""
        return self.ca_file is not None

    def context(self, *, key_password: str | bytes | None = None) -> ssl.SSLContext:
        """Load the files into a server context (see :func:`server_context`)."""
        return server_context(self.certificate, self.key, self.ca_file, key_password=key_password)


def server_tls_from_options(
    *,
    ssl: bool,
    ssl_certificate: str | os.PathLike[str] | None = None,
    ssl_key: str | os.PathLike[str] | None = None,
    ssl_ca_file: str | os.PathLike[str] | None = None,
) -> ServerTLS | None:
    """Interpret gearmand's ``--ssl*`` options; None means plaintext was asked for.

    Call :meth:`ServerTLS.context` at start-up: it loads and checks the files.

    Raises:
        TLSConfigError: ``--ssl`` without ``--ssl-certificate``, or an ``--ssl-*``
            file option without ``--ssl`` (which would otherwise silently serve
            plaintext).
    """
    given = {
        "--ssl-certificate": ssl_certificate,
        "--ssl-key": ssl_key,
        "--ssl-ca-file": ssl_ca_file,
    }
    if not ssl:
        named = [option for option, value in given.items() if value]
        if named:
            _fail(
                f"{', '.join(named)} given without --ssl: add --ssl to serve TLS "
                "(refusing to start in plaintext)"
            )
        return None
    for option, value in given.items():
        if value is not None and not os.fspath(value):
            _fail(f"{option} is empty")
    if not ssl_certificate:
        _fail("--ssl needs --ssl-certificate (and --ssl-key unless the certificate file holds it)")
    return ServerTLS(
        Path(ssl_certificate),
        Path(ssl_key) if ssl_key else None,
        Path(ssl_ca_file) if ssl_ca_file else None,
    )


# --------------------------------------------------------------------- subjects


def subject_from_peercert(peercert: Mapping[str, Any] | None) -> Subject | None:
    """The subject of a peer certificate as returned by ``getpeercert()``.

    None when there is no (verified) certificate: an empty dict, which is what a
    server without ``--ssl-ca-file`` sees, or None.  asyncio runners get ``peercert``
    from ``transport.get_extra_info("peercert")``; trio from ``SSLStream.getpeercert()``.
    """
    if not peercert:
        return None
    pairs: list[tuple[str, str]] = []
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            short = ATTRIBUTE_NAMES.get(name, name.upper())
            pairs.append((short, str(value)))
    return tuple(pairs) if pairs else None


def format_subject(subject: Subject) -> str:
    """``CN=worker-1,O=Example`` (commas and backslashes in values escaped)."""
    return ",".join(
        f"{name}={value.replace(chr(92), chr(92) * 2).replace(',', chr(92) + ',')}"
        for name, value in subject
    )
