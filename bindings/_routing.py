"""Server addresses, consistent hashing of unique ids, and reconnect backoff (no I/O).

Consistent hashing sends every submission with the same unique id to the same server,
so coalescing keeps working when a client knows several servers; when that server is
down, the next servers on the ring are tried in a fixed order, so every client fails
over to the same place.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

__all__ = ["DEFAULT_PORT", "Backoff", "HashRing", "ServerAddress", "ServerSpec", "parse_servers"]

#: The IANA port of Gearman.
DEFAULT_PORT = 4730


class ServerAddress(NamedTuple):
    """A server's host and port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


#: What the bindings accept as a server: ``"host"``, ``"host:port"``, ``"[::1]:port"``,
#: ``(host, port)`` or a :class:`ServerAddress`.
ServerSpec: TypeAlias = str | tuple[str, int] | ServerAddress


def parse_address(spec: ServerSpec) -> ServerAddress:
    """One server specification as a :class:`ServerAddress`.

    Raises:
        ValueError: the text is not ``host``, ``host:port`` or ``[ipv6]:port``.
    """
    if isinstance(spec, tuple):
        return ServerAddress(str(spec[0]), _port(str(spec[1])))
    if not isinstance(spec, str):
        raise TypeError(f"a server is 'host:port' or (host, port), not {spec!r}")
    text = spec.strip()
    if not text:
        raise ValueError("empty server address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in server address {spec!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return ServerAddress(host)
        if not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in {spec!r}")
        return ServerAddress(host, _port(rest[1:]))
    if text.count(":") > 1:  # a bare IPv6 address without a port
        return ServerAddress(text)
    host, sep, port = text.partition(":")
    if not host:
        raise ValueError(f"missing host in server address {spec!r}")
    return ServerAddress(host, _port(port) if sep else DEFAULT_PORT)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def parse_servers(servers: ServerSpec | Iterable[ServerSpec]) -> list[ServerAddress]:
    """A list of servers from one spec, a comma-separated string, or an iterable."""
    if isinstance(servers, str):
        items: list[ServerSpec] = [s for s in servers.split(",") if s.strip()]
    elif isinstance(servers, ServerAddress) or (
        isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int)
    ):
        items = [servers]
    else:
        items = list(servers)
    addresses = [parse_address(s) for s in items]
    if not addresses:
        raise ValueError("at least one server is needed")
    if len(set(addresses)) != len(addresses):
        raise ValueError("the same server is listed twice")
    return addresses


class HashRing:
    """A consistent-hash ring over ``n`` servers (identified by their addresses).

    Each server owns ``replicas`` points; a key belongs to the first point clockwise of
    its hash.  Adding or removing one server moves only about ``1/n`` of the keys.
    """

    def __init__(self, addresses: Sequence[ServerAddress], replicas: int = 160) -> None:
        points: list[tuple[int, int]] = []
        for index, address in enumerate(addresses):
            name = str(address).encode()
            points.extend((_hash(name + b"#%d" % replica), index) for replica in range(replicas))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]
        self._count = len(addresses)

    def order(self, key: bytes) -> list[int]:
        """Server indexes in the order to try for ``key``: its owner first."""
        if self._count == 1:
            return [0]
        start = bisect.bisect(self._hashes, _hash(key)) % len(self._hashes)
        seen: list[int] = []
        owners = self._owners
        for offset in range(len(owners)):
            owner = owners[(start + offset) % len(owners)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == self._count:
                    break
        return seen


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter for reconnects, in seconds.

    The n-th consecutive failure waits ``min(maximum, initial * multiplier**n)`` scaled
    by a random factor in ``[1 - jitter, 1]``, so many clients that lost the same server
    do not all come back at the same instant.
    """

    initial: float = 0.05
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError("Backoff needs 0 < initial <= maximum")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("Backoff needs multiplier >= 1 and 0 <= jitter <= 1")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures (``failures >= 1``)."""
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1.0 - self.jitter * rng.random())
