"""Admin access control: which commands mutate, who may send them, and option parsing."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from gearproto import admin
from gearproto.server.acl import (
    READ_ONLY_COMMANDS,
    AdminAccess,
    AllowList,
    AllowListError,
    command_name,
    is_local,
    is_mutating,
)

MUTATING = [
    admin.MaxQueue(b"f", (1,)),
    admin.CancelJob(b"H:x:1"),
    admin.CreateFunction(b"f"),
    admin.DropFunction(b"f"),
    admin.Shutdown(),
    admin.Shutdown(graceful=True),
]
READ_ONLY = [
    admin.Workers(),
    admin.Status(),
    admin.PriorityStatus(),
    admin.ShowJobs(),
    admin.ShowUniqueJobs(),
    admin.GetPid(),
    admin.Verbose(),
    admin.Version(),
]
LOCAL = ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "memory", "unix", ""]
REMOTE = ["10.0.0.5", "192.168.1.1", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1%eth0", "host.x"]
OPS = (("CN", "ops"), ("O", "Example"), ("OU", "Infra"))


def test_classification_matches_the_core() -> None:
    for command in MUTATING:
        assert is_mutating(command)
        assert type(command) in admin.MUTATING_COMMANDS
    for command in READ_ONLY:
        assert not is_mutating(command)
        assert type(command) not in admin.MUTATING_COMMANDS
    assert {type(c) for c in READ_ONLY} == READ_ONLY_COMMANDS
    assert is_mutating(object())  # unknown commands: fail closed
    assert command_name(admin.CancelJob(b"h")) == "cancel job"
    assert command_name(admin.ShowUniqueJobs()) == "show unique jobs"


@pytest.mark.parametrize("host", LOCAL)
def test_local_peers(host: str) -> None:
    assert is_local(host)


@pytest.mark.parametrize("host", REMOTE)
def test_remote_peers(host: str) -> None:
    assert not is_local(host)


@pytest.mark.parametrize("command", MUTATING, ids=command_name)
def test_default_mutating_only_from_local_peers(command: Any) -> None:
    access = AdminAccess()
    for host in LOCAL:
        assert access.refusal(command, host) is None, host
    for host in REMOTE:
        refusal = access.refusal(command, host, OPS)
        assert refusal is not None, host
        assert refusal.code == b"PERMISSION_DENIED"
        assert command_name(command).replace(" ", "+").encode() in refusal.text


@pytest.mark.parametrize("command", READ_ONLY, ids=command_name)
def test_default_read_only_from_anyone(command: Any) -> None:
    access = AdminAccess()
    for host in LOCAL + REMOTE:
        assert access.refusal(command, host) is None


def test_the_refusal_is_a_well_formed_err_line() -> None:
    refusal = AdminAccess().refusal(admin.CancelJob(b"H:x:1"), "10.0.0.5")
    assert refusal is not None
    line = admin.format_reply(refusal)
    assert line == (
        b"ERR PERMISSION_DENIED cancel+job+is+only+allowed+from+local+peers+or+those+"
        b"listed+by+--admin-allow\r\n"
    )
    assert admin.parse_reply_line(line.removesuffix(b"\r\n")) == refusal


def test_lines_the_server_cannot_parse_are_left_to_the_server() -> None:
    bad = admin.AdminBadCommand((b"frobnicate",), admin.AdminError(b"UNKNOWN_COMMAND", b"x"))
    assert AdminAccess.from_options("none", "none").refusal(bad, "10.0.0.5") is None


def test_networks_and_addresses() -> None:
    access = AdminAccess.from_options("10.0.0.0/8, 192.168.1.7,fd00::/8,[2001:db8::5]")
    allowed = ["10.1.2.3", "::ffff:10.9.9.9", "192.168.1.7", "fd00::abcd", "2001:db8::5", "::1"]
    refused = ["11.0.0.1", "192.168.1.8", "fe00::1", "2001:db8::6", "memory.example"]
    for host in allowed:
        assert access.refusal(admin.CancelJob(b"h"), host) is None, host
    for host in refused:
        assert access.refusal(admin.CancelJob(b"h"), host) is not None, host


def test_ipv4_mapped_networks_match_ipv4_peers() -> None:
    allow = AllowList.parse("::ffff:10.0.0.0/104")
    assert allow.allows("10.200.0.1", None)
    assert allow.allows("::ffff:10.200.0.1", None)
    assert not allow.allows("11.0.0.1", None)


def test_certificate_subjects() -> None:
    access = AdminAccess.from_options(
        ["subject:CN=ops,O=Example", "subject:commonName=backup\\, nightly"]
    )
    cancel = admin.CancelJob(b"h")
    assert access.refusal(cancel, "10.0.0.5", OPS) is None  # extra attributes are fine
    assert access.refusal(cancel, "10.0.0.5", (("CN", "backup, nightly"),)) is None
    assert access.refusal(cancel, "10.0.0.5", (("CN", "ops"),)) is not None  # O missing
    assert access.refusal(cancel, "10.0.0.5", (("CN", "Ops"), ("O", "Example"))) is not None
    assert access.refusal(cancel, "10.0.0.5", None) is not None  # no certificate


def test_several_subjects_in_one_option() -> None:
    allow = AllowList.parse("subject:CN=a,O=x,subject:CN=b,10.0.0.0/8")
    assert allow.allows("192.0.2.1", (("CN", "a"), ("O", "x")))
    assert allow.allows("192.0.2.1", (("CN", "b"),))
    assert not allow.allows("192.0.2.1", (("CN", "a"),))
    assert allow.allows("10.0.0.1", None)
    # the prefix may be left out on a subject that starts the list; names are case-blind
    assert AllowList.parse("cn=a").allows("192.0.2.1", (("CN", "a"),))


def test_none_any_and_local() -> None:
    cancel = admin.CancelJob(b"h")
    nobody = AdminAccess.from_options("none")
    assert nobody.refusal(cancel, "127.0.0.1") is not None
    assert nobody.refusal(cancel, "memory") is not None
    assert nobody.refusal(admin.Status(), "10.0.0.1") is None  # reads stay open
    everyone = AdminAccess.from_options("any")
    assert everyone.refusal(cancel, "203.0.113.9") is None
    assert AdminAccess.from_options("local").refusal(cancel, "::1") is None
    assert AdminAccess.from_options([]).refusal(cancel, "::1") is None
    # none with entries: only those, not the local peers
    only = AdminAccess.from_options("none,127.0.0.2,10.0.0.0/8")
    assert only.refusal(cancel, "127.0.0.2") is None
    assert only.refusal(cancel, "10.1.2.3") is None
    assert only.refusal(cancel, "127.0.0.1") is not None
    assert only.refusal(cancel, "memory") is not None
    assert only.mutating.describe() == "none,127.0.0.2/32,10.0.0.0/8"


def test_read_only_commands_can_be_restricted() -> None:
    access = AdminAccess.from_options(admin_read_allow="10.0.0.0/8")
    refusal = access.refusal(admin.ShowUniqueJobs(), "192.168.1.1")
    assert refusal == admin.AdminError(
        b"PERMISSION_DENIED",
        b"show+unique+jobs+is+only+allowed+from+peers+listed+by+--admin-read-allow",
    )
    assert access.refusal(admin.ShowUniqueJobs(), "10.1.1.1") is None
    assert access.refusal(admin.Workers(), "127.0.0.1") is None  # local peers included
    # the read list does not grant mutating commands
    assert access.refusal(admin.CancelJob(b"h"), "10.1.1.1") is not None


def test_describe() -> None:
    assert AllowList().describe() == "local"
    assert AllowList.parse("none").describe() == "none"
    assert AllowList.parse("any").describe() == "any"
    assert AllowList.parse("10.0.0.0/8,subject:O=x,CN=y").describe() == (
        "local,10.0.0.0/8,subject:CN=y,O=x"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10.0.0.300", "'10.0.0.300' is not an IP address, a network"),
        ("host.example", "'host.example' is not an IP address"),
        ("10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "is not an IP address"),
        ("subject:CN", "subject parts are ATTRIBUTE=value"),
        ("subject:CN=", "subject parts are ATTRIBUTE=value"),
        ("subject:XX=1", "unknown subject attribute 'XX'"),
        ("10.0.0.1,,10.0.0.2", "empty entry"),
        ("none,local", "'none' cannot be combined with 'local' or 'any'"),
        ("none,any", "'none' cannot be combined"),
    ],
)
def test_bad_allow_lists(spec: str, message: str) -> None:
    with pytest.raises(AllowListError, match=message) as caught:
        AdminAccess.from_options(spec)
    assert str(caught.value).startswith("--admin-allow: ")
    with pytest.raises(AllowListError, match=r"^--admin-read-allow: "):
        AdminAccess.from_options(None, spec)


class FakePeer(NamedTuple):
    """What a runner knows about a peer: its host and maybe a certificate subject."""

    host: str
    port: int = 0
    subject: tuple[tuple[str, str], ...] | None = None


class NoSubjectPeer(NamedTuple):
    host: str


class CertPeer(NamedTuple):
    """The server's PeerInfo shape: the raw ``getpeercert()`` dictionary."""

    host: str
    peercert: Any = None


def test_guard_hook_for_the_server() -> None:
    access = AdminAccess.from_options("subject:CN=ops")
    cancel = admin.CancelJob(b"h")
    assert access.guard(NoSubjectPeer("127.0.0.1"), cancel) is None
    assert access.guard(NoSubjectPeer("10.0.0.1"), cancel) is not None
    assert access.guard(FakePeer("10.0.0.1", subject=OPS), cancel) is None
    assert access.guard(FakePeer("10.0.0.1"), cancel) is not None
    cert = {"subject": ((("commonName", "ops"),), (("organizationName", "Example"),))}
    assert access.guard(CertPeer("10.0.0.1", cert), cancel) is None
    assert access.guard(CertPeer("10.0.0.1", {}), cancel) is not None  # no certificate
    other = {"subject": ((("commonName", "intruder"),),)}
    assert access.guard(CertPeer("10.0.0.1", other), cancel) is not None
