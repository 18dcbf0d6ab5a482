"""Target addresses: parsing ``HOST:PORT`` and the loopback-only safety rail."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

__all__ = ["Address", "AddressError", "parse_address"]


class AddressError(ValueError):
    """A ``HOST:PORT`` that cannot be used as a fuzz target."""


@dataclass(frozen=True, slots=True)
class Address:
    """A resolved TCP address of a Gearman server."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


def parse_address(text: str, *, allow_remote: bool = False) -> Address:
    """Read ``HOST:PORT`` (or ``[V6]:PORT``) and resolve it to one IP address.

    Raises:
        AddressError: malformed text, unresolvable host, a port out of range, or a
            non-loopback address while ``allow_remote`` is false.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise AddressError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:4730")
        if ":" in host:
            raise AddressError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(f"{text!r}: the port must be a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressError(f"{text!r}: cannot resolve {host!r} ({exc.strerror})") from None
    resolved = str(infos[0][4][0])
    address = Address(resolved, int(port_text))
    if not allow_remote and not address.is_loopback:
        raise AddressError(
            f"{text!r} resolves to {resolved}, which is not a loopback address; the fuzzer"
            " crashes and hangs servers, so it only targets this machine unless you pass"
            " --allow-remote (never point it at a production server)"
        )
    return address
