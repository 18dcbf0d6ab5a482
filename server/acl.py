"""Who may run which admin command: a pure policy, no I/O.

gearmand lets any connection cancel anyone's job, cap any queue with ``maxqueue`` and
drop functions.  Here admin commands come in two classes:

* **read-only** (``status``, ``prioritystatus``, ``workers``, ``show jobs``, ``show
  unique jobs``, ``getpid``, ``verbose``, ``version``): allowed from anyone by default;
  ``--admin-read-allow`` restricts them too (``workers`` shows peers' addresses and
  ``show unique jobs`` the unique ids, which often hold business identifiers).
* **mutating** (:data:`gearproto.admin.MUTATING_COMMANDS`: ``maxqueue``, ``cancel job``,
  ``create function``, ``drop function``, ``shutdown``): allowed only from local peers
  (loopback addresses, Unix-domain sockets, the in-memory transport) unless
  ``--admin-allow`` lists more.  Commands this module does not know are treated as
  mutating (fail closed).

An allow-list is a comma-separated list of entries:

* an IPv4 or IPv6 address (``10.1.2.3``, ``::1``, ``[fd00::5]``) or network in CIDR
  form (``10.0.0.0/8``, ``fd00::/8``); IPv4-mapped IPv6 peers match as IPv4;
* a client-certificate subject, ``subject:CN=ops,O=Example``: a peer matches when its
  verified certificate's subject has every listed attribute with exactly that value.
  ``ATTRIBUTE=value`` parts after a subject belong to it; each further subject starts
  with ``subject:`` again (the prefix may be left out on the first one); ``\\,``
  escapes a comma inside a value;
* ``local``: the local peers above (always included, unless ``none`` is given);
* ``any``: every peer;
* ``none``: not the local peers: alone, no peer at all; with addresses or subjects,
  only those (``none,10.0.0.7``: that host, and not even loopback).

Certificate subjects only exist under mutual TLS (``--ssl-ca-file``); see
:mod:`gearproto.server.tls`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from gearproto import admin as _admin

from .tls import ATTRIBUTE_NAMES, Subject, subject_from_peercert

__all__ = [
    "LOCAL_HOSTS",
    "READ_ONLY_COMMANDS",
    "AdminAccess",
    "AllowList",
    "AllowListError",
    "command_name",
    "is_local",
    "is_mutating",
]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Peer "hosts" that are not network addresses and count as local: the in-memory
#: transport, and Unix-domain sockets (guarded by file permissions).
LOCAL_HOSTS = frozenset({"memory", "unix", ""})

#: Admin commands that only read server state.
READ_ONLY_COMMANDS: frozenset[type[Any]] = frozenset(
    {
        _admin.Workers,
        _admin.Status,
        _admin.PriorityStatus,
        _admin.ShowJobs,
        _admin.ShowUniqueJobs,
        _admin.GetPid,
        _admin.Verbose,
        _admin.Version,
    }
)

_NAMES: dict[type[Any], str] = {
    _admin.Workers: "workers",
    _admin.Status: "status",
    _admin.PriorityStatus: "prioritystatus",
    _admin.ShowJobs: "show jobs",
    _admin.ShowUniqueJobs: "show unique jobs",
    _admin.GetPid: "getpid",
    _admin.Verbose: "verbose",
    _admin.Version: "version",
    _admin.MaxQueue: "maxqueue",
    _admin.CancelJob: "cancel job",
    _admin.CreateFunction: "create function",
    _admin.DropFunction: "drop function",
    _admin.Shutdown: "shutdown",
}

_SHORT_NAMES = {name.upper() for name in ATTRIBUTE_NAMES.values()}
_LONG_NAMES = {long.upper(): short for long, short in ATTRIBUTE_NAMES.items()}


class AllowListError(ValueError):
    """An allow-list option that cannot be parsed; the message names the bad entry."""


def command_name(command: object) -> str:
    """The admin command's name as typed (``cancel job``), for messages."""
    return _NAMES.get(type(command), type(command).__name__)


def is_mutating(command: object) -> bool:
    """True unless ``command`` is a known read-only command (unknown ones: True)."""
    return type(command) not in READ_ONLY_COMMANDS


def peer_address(host: str) -> Address | None:
    """``host`` as an IP address (IPv4-mapped IPv6 as IPv4), or None if it is not one."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local(host: str) -> bool:
    """Loopback addresses, Unix-domain sockets and the in-memory transport."""
    if host in LOCAL_HOSTS:
        return True
    address = peer_address(host)
    return address is not None and address.is_loopback


# -------------------------------------------------------------------- allow-lists


@dataclass(frozen=True, slots=True)
class AllowList:
    """Peers allowed by one option: networks, certificate subjects, local, any."""

    networks: tuple[Network, ...] = ()
    #: Each pattern: the (attribute, value) pairs a subject must all contain.
    subjects: tuple[frozenset[tuple[str, str]], ...] = ()
    local: bool = True
    any: bool = False

    @classmethod
    def parse(cls, spec: str | Iterable[str] | None, option: str = "--admin-allow") -> AllowList:
        """Parse a comma-separated list (or several, e.g. a repeated option).

        None or an empty list gives the default: local peers only.

        Raises:
            AllowListError: naming the option and the entry that is not an address,
                a network, a subject, ``local``, ``any`` or ``none``.
        """
        specs = [spec] if isinstance(spec, str) else list(spec or ())
        entries = [entry for text in specs for entry in _split(text, option)]
        networks: list[Network] = []
        subjects: list[frozenset[tuple[str, str]]] = []
        local = True
        allow_any = False
        words = {entry.lower() for entry in entries}
        if "none" in words and words & {"any", "local"}:
            raise AllowListError(f"{option}: 'none' cannot be combined with 'local' or 'any'")
        for entry in entries:
            word = entry.lower()
            if word == "none":
                local = False
            elif word == "any":
                allow_any = True
            elif word == "local":
                local = True
            elif word.startswith("subject:") or "=" in entry:
                subjects.append(_parse_subject(entry, option))
            else:
                networks.append(_parse_network(entry, option))
        return cls(tuple(networks), tuple(subjects), local, allow_any)

    def allows(self, host: str, subject: Subject | None) -> bool:
        """Whether a peer at ``host`` with certificate ``subject`` is on the list."""
        if self.any:
            return True
        if self.local and is_local(host):
            return True
        if self.networks:
            address = peer_address(host)
            if address is not None and any(address in network for network in self.networks):
                return True
        if self.subjects and subject:
            have = {(name.upper(), value) for name, value in subject}
            return any(pattern <= have for pattern in self.subjects)
        return False

    def describe(self) -> str:
        """The list in option syntax (for logs and error texts)."""
        if self.any:
            return "any"
        parts = ["local"] if self.local else ["none"]
        parts += [str(network) for network in self.networks]
        parts += [
            "subject:" + ",".join(f"{n}={v}" for n, v in sorted(pattern))
            for pattern in self.subjects
        ]
        return ",".join(parts)


def _split(text: str, option: str) -> list[str]:
    """Split on commas, except escaped ones and those inside a subject entry."""
    entries: list[str] = []
    for raw in _split_unescaped(text):
        part = raw.strip()
        if not part:
            if text.strip():
                raise AllowListError(f"{option}: empty entry in {text!r}")
            continue
        # ``subject:CN=a,O=b``: an ``ATTR=value`` part continues the subject before it.
        if entries and "=" in part and not part.lower().startswith("subject:"):
            previous = entries[-1]
            if previous.lower().startswith("subject:") or "=" in previous:
                entries[-1] = previous + "," + part
                continue
        entries.append(part)
    return entries


def _split_unescaped(text: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _parse_network(entry: str, option: str) -> Network:
    text = entry.replace("[", "").replace("]", "")  # [fd00::1] and [fd00::]/8
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            fixed = ipaddress.ip_network(text, strict=False)
            raise AllowListError(
                f"{option}: {entry!r} has host bits set; did you mean {fixed}?"
            ) from None
        raise AllowListError(
            f"{option}: {entry!r} is not an IP address, a network (10.0.0.0/8, fd00::/8), "
            "a certificate subject (subject:CN=name), 'local', 'any' or 'none'"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        prefix = max(network.prefixlen - 96, 0)
        return ipaddress.IPv4Network(f"{mapped}/{prefix}", strict=False)
    return network


def _parse_subject(entry: str, option: str) -> frozenset[tuple[str, str]]:
    text = entry[len("subject:") :] if entry.lower().startswith("subject:") else entry
    pairs: set[tuple[str, str]] = set()
    for raw in _split_unescaped(text):
        part = raw.strip()
        name, sep, value = part.partition("=")
        name = name.strip()
        value = value.strip().replace("\\,", ",").replace("\\\\", "\\")
        if not sep or not name or not value:
            raise AllowListError(
                f"{option}: {entry!r}: subject parts are ATTRIBUTE=value (e.g. CN=ops), "
                f"not {part!r}"
            )
        upper = name.upper()
        short = _LONG_NAMES.get(upper, upper)
        if short == "EMAILADDRESS":
            short = "EMAIL"
        if short not in _SHORT_NAMES:
            known = ", ".join(sorted(_SHORT_NAMES))
            raise AllowListError(
                f"{option}: {entry!r}: unknown subject attribute {name!r} (known: {known})"
            )
        pairs.add((short, value))
    return frozenset(pairs)


# ------------------------------------------------------------------------ policy


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """The admin policy: who may run mutating commands, and who read-only ones.

    Defaults: mutating commands from local peers only; read-only ones from anyone.
    """

    mutating: AllowList = AllowList()
    read_only: AllowList = AllowList(any=True)

    @classmethod
    def from_options(
        cls,
        admin_allow: str | Sequence[str] | None = None,
        admin_read_allow: str | Sequence[str] | None = None,
    ) -> AdminAccess:
        """From ``--admin-allow`` and ``--admin-read-allow`` (None: the defaults).

        Raises:
            AllowListError: an option cannot be parsed.
        """
        mutating = AllowList.parse(admin_allow, "--admin-allow")
        if admin_read_allow is None:
            read_only = AllowList(any=True)
        else:
            read_only = AllowList.parse(admin_read_allow, "--admin-read-allow")
        return cls(mutating, read_only)

    def refusal(
        self, command: object, host: str, subject: Subject | None = None
    ) -> _admin.AdminError | None:
        """None if a peer at ``host`` (with certificate ``subject``) may run ``command``;
        else the ``ERR`` reply to send instead (the command must then change nothing).

        ``host`` is the peer's IP address as text (IPv6 with or without brackets), or
        ``"memory"`` / ``"unix"`` / ``""`` for in-memory and Unix-domain peers.  A line
        the server could not parse (:class:`gearproto.admin.AdminBadCommand`) is always
        allowed: its own error reply reveals and changes nothing.
        """
        if type(command) is _admin.AdminBadCommand:
            return None
        mutating = is_mutating(command)
        allowed = self.mutating if mutating else self.read_only
        if allowed.allows(host, subject):
            return None
        name = command_name(command)
        if mutating:
            text = f"{name} is only allowed from local peers or those listed by --admin-allow"
        else:
            text = f"{name} is only allowed from peers listed by --admin-read-allow"
        return _admin.AdminError(b"PERMISSION_DENIED", text.replace(" ", "+").encode())

    def guard(self, peer: Any, command: Any) -> _admin.AdminError | None:
        """The server's ``admin_guard`` hook: ``refusal`` for a peer-info object.

        Reads ``peer.host`` and the verified client certificate when the runner
        provides one: ``peer.peercert`` (as ``getpeercert()`` returns it) or
        ``peer.subject`` (already converted by
        :func:`gearproto.server.tls.subject_from_peercert`).
        """
        subject = getattr(peer, "subject", None)
        if subject is None:
            subject = subject_from_peercert(getattr(peer, "peercert", None))
        return self.refusal(command, str(peer.host), subject)
