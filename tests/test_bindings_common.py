"""The I/O-free pieces the bindings share: addresses, hashing, backoff, outcomes."""

from __future__ import annotations

import random

import pytest

from gearproto.bindings._outcomes import (
    Accepted,
    Completed,
    Disconnected,
    JobDisconnected,
    JobTimedOut,
    TimedOut,
    raise_for,
)
from gearproto.bindings._routing import Backoff, HashRing, ServerAddress, parse_servers


def test_addresses() -> None:
    assert parse_servers("a:1,b , [::1]:7,[fe80::1]") == [
        ServerAddress("a", 1),
        ServerAddress("b", 4730),
        ServerAddress("::1", 7),
        ServerAddress("fe80::1", 4730),
    ]
    assert parse_servers(("h", 5)) == [ServerAddress("h", 5)]
    assert str(ServerAddress("::1", 7)) == "[::1]:7"
    for bad in ("", "h:0", "h:x", "[::1", ":5", "h:70000"):
        with pytest.raises(ValueError):
            parse_servers(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_servers(["a:1", "a:1"])


def test_hash_ring_is_stable_and_moves_few_keys() -> None:
    three = [ServerAddress(f"s{i}", 4730) for i in range(3)]
    ring = HashRing(three)
    reordered = HashRing(list(reversed(three)))
    keys = [b"key-%d" % i for i in range(2000)]
    owners = [three[ring.order(k)[0]] for k in keys]
    assert owners == [list(reversed(three))[reordered.order(k)[0]] for k in keys]
    counts = {a: owners.count(a) for a in three}
    assert min(counts.values()) > 2000 / 3 * 0.7  # balanced within 30 %
    assert all(sorted(ring.order(k)) == [0, 1, 2] for k in keys[:50])
    four = HashRing([*three, ServerAddress("s3", 4730)])
    moved = sum(1 for k, o in zip(keys, owners, strict=True) if three[four.order(k)[0] % 3] != o)
    assert moved < 2000 * 0.4  # about a quarter move to the new server


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    first = [backoff.delay(1, rng) for _ in range(200)]
    assert all(0.05 <= d <= 0.1 for d in first)
    assert len({round(d, 6) for d in first}) > 100  # jittered
    assert all(0.5 <= backoff.delay(50, rng) <= 1.0 for _ in range(50))
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(jitter=2)


def test_raise_for_maps_outcomes_to_exceptions() -> None:
    assert raise_for(Completed(b"x")) == b"x"
    assert raise_for(Accepted(b"H:1")) == b"H:1"
    with pytest.raises(JobTimedOut) as timed_out:
        raise_for(TimedOut("created", 1.5))
    assert isinstance(timed_out.value, TimeoutError)
    assert "1.5 s" in str(timed_out.value)
    cause = ConnectionRefusedError()
    with pytest.raises(JobDisconnected) as lost:
        raise_for(Disconnected("gone", True, cause))
    assert isinstance(lost.value, ConnectionError)
    assert lost.value.outcome == Disconnected("gone", True)
