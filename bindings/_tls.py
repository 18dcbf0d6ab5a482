"""TLS for the bindings: the ``ssl=`` option, contexts from files, readable errors.

Every client, worker and admin takes ``ssl=``: ``None``/``False`` for plaintext, ``True``
for TLS verified against the system's CAs, or an :class:`ssl.SSLContext`.  The server's
certificate and host name (the host of the server address) are verified unless the
context says otherwise; :func:`tls_context` builds one from PEM files (a private CA, a
client certificate for mutual TLS).

The contexts come from :func:`gearproto.server.tls.client_context` (TLS 1.2+, the
server's own rules for files), imported only when a context is built here, so that
plaintext users never load the server package.
"""

from __future__ import annotations

import os
import ssl
from typing import TypeAlias

from ._outcomes import GearmanError

__all__ = ["SSLOption", "TLSConfigError", "describe_tls_error", "resolve_ssl", "tls_context"]

#: What ``ssl=`` accepts.
SSLOption: TypeAlias = ssl.SSLContext | bool | None


class TLSConfigError(GearmanError, ValueError):
    """A TLS file or setting cannot be used (missing, unreadable, not PEM, ...)."""


def tls_context(
    ca_file: str | os.PathLike[str] | None = None,
    certificate: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    key_password: str | bytes | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context, TLS 1.2 or later, that verifies the server by default.

    ``ca_file``: the CAs the server's certificate must chain to (default: the
    system's).  ``certificate`` and ``key``: this client's own, for servers that
    require mutual TLS (``key`` may be omitted when the certificate file holds it).
    ``verify=False`` turns every check off: the connection is encrypted but the
    server is not authenticated.

    Raises:
        TLSConfigError: a file is missing, unreadable or not PEM, a key is encrypted
            without ``key_password`` or does not match the certificate, or a key was
            given without its certificate.
    """
    from gearproto.server import tls

    try:
        return tls.client_context(
            ca_file, certificate, key, key_password=key_password, verify=verify
        )
    except tls.TLSConfigError as exc:
        raise TLSConfigError(f"TLS: {exc}") from exc


def resolve_ssl(option: SSLOption) -> ssl.SSLContext | None:
    """The context for an ``ssl=`` argument (``None``: plaintext).

    Raises:
        TypeError: ``option`` is none of ``None``, a bool or an SSLContext.
    """
    if option is None or option is False:
        return None
    if option is True:
        return tls_context()
    if isinstance(option, ssl.SSLContext):
        return option
    raise TypeError(f"ssl= takes an ssl.SSLContext, True or None, not {option!r}")


def describe_tls_error(error: BaseException) -> str | None:
    """A readable sentence for a TLS failure, or ``None`` if ``error`` is not one."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return f"TLS: the server's certificate was not accepted: {detail}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    return None
