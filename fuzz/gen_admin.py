"""Generators of admin (text) lines, alone and mixed with binary packets.

The command words come from the core's admin module: every command it can format is
generated with 0-7 tokens, odd separators and line endings, NULs, over-long lines
and lines that never end.
"""

from __future__ import annotations

import random

from gearproto import admin

from .case import Case, Connect, Send, Step
from .gen_packets import random_request
from .values import GenContext

__all__ = ["ADMIN_VERBS", "admin_line", "gen_admin", "gen_mixed"]


def _verbs(destructive: bool) -> list[bytes]:
    commands: list[admin.AdminCommand] = [
        admin.Workers(),
        admin.Status(),
        admin.PriorityStatus(),
        admin.ShowJobs(),
        admin.ShowUniqueJobs(),
        admin.GetPid(),
        admin.Verbose(),
        admin.Version(),
        admin.MaxQueue(b"f", ()),
        admin.CancelJob(b"h"),
        admin.CreateFunction(b"f"),
        admin.DropFunction(b"f"),
    ]
    if destructive:
        commands.append(admin.Shutdown())
    words = {admin.format_command(c).split()[0] for c in commands}
    return sorted(words)


#: Command words every server knows (``shutdown`` only with ``--destructive``).
ADMIN_VERBS = _verbs(False)
_SECOND = (b"jobs", b"unique", b"job", b"function", b"graceful", b"", b"JOBS")


def admin_line(rng: random.Random, ctx: GenContext, index: int, *, destructive: bool) -> bytes:
    """One admin line (with its line ending) built from real command words."""
    verbs = _verbs(destructive)
    ntokens = rng.randrange(0, 8)
    tokens: list[bytes] = []
    if ntokens:
        verb = rng.choice(verbs)
        if rng.random() < 0.2:
            verb = verb.upper() if rng.random() < 0.5 else verb.capitalize()
        tokens.append(verb)
    for i in range(1, ntokens):
        if i == 1:
            tokens.append(rng.choice(_SECOND))
        else:
            tokens.append(
                rng.choice(
                    (
                        ctx.name(rng, index),
                        ctx.handle(rng),
                        b"%d" % rng.choice((0, 1, -1, 2147483648, 99999999999)),
                        b"jobs",
                        b"x\tTAB",
                        b"abc\0def",
                    )
                )
            )
    sep = rng.choice((b" ", b" ", b" ", b"  ", b"\t"))
    line = sep.join(tokens)
    if rng.random() < 0.1:
        line = b" " + line
    if rng.random() < 0.1:
        line = line + b" "
    if rng.random() < 0.05:
        line = line[: rng.randrange(len(line) + 1)] + b"\0" + line[rng.randrange(len(line) + 1) :]
    ending = rng.choice((b"\n", b"\r\n", b"\r\n", b"\r\r\n", b"\n\n"))
    return line + ending


def gen_admin(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """1-5 admin lines on one connection, sometimes over-long or unterminated."""
    lines = [
        admin_line(rng, ctx, index, destructive=ctx.destructive) for _ in range(rng.randrange(1, 6))
    ]
    what = f"{len(lines)} admin line(s)"
    extra = rng.randrange(8)
    if extra == 0:
        size = rng.choice((8190, 8191, 8192, 8193, 16384, 65536))
        lines.append(b"status " + b"x" * (size - 8) + b"\n")
        what += f" and a {size}-byte line"
    elif extra == 1:
        lines.append(b"version")  # never terminated
        what += " and an unterminated line"
    steps: list[Step] = [Connect(0)]
    if rng.random() < 0.5:
        steps.append(Send(0, b"".join(lines)))
    else:
        steps.extend(Send(0, line) for line in lines)
    return Case(tuple(steps), "admin.lines", seed, index, what)


def gen_mixed(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """Binary packets and admin lines interleaved, often in one write."""
    parts: list[bytes] = []
    for _ in range(rng.randrange(2, 8)):
        if rng.random() < 0.5:
            parts.append(admin_line(rng, ctx, index, destructive=ctx.destructive))
        else:
            parts.append(random_request(rng, ctx, index, weird=rng.choice((0.0, 0.3))))
    steps: list[Step] = [Connect(0)]
    if rng.random() < 0.6:
        steps.append(Send(0, b"".join(parts)))
    else:
        steps.extend(Send(0, p) for p in parts)
    return Case(tuple(steps), "admin.mixed", seed, index, f"{len(parts)} binary/text parts")
