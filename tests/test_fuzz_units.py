"""The fuzzer's parts that need no server: formats, generators, matching, shrinking, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gearproto import PACKETS, REQ, RES, Direction, admin, raw_packet
from gearproto.fuzz import cli
from gearproto.fuzz.address import AddressError, parse_address
from gearproto.fuzz.case import Case, CaseFormatError, Close, Connect, Pause, Send, load_case_dict
from gearproto.fuzz.differential import _classify
from gearproto.fuzz.expect import ReplyMatcher
from gearproto.fuzz.gen_admin import ADMIN_VERBS
from gearproto.fuzz.generators import FAMILIES, case_for
from gearproto.fuzz.listings import Ownership, forged_rows
from gearproto.fuzz.minimize import Minimizer, ddmin, split_frames
from gearproto.fuzz.shadow import shadow_parse
from gearproto.fuzz.values import GenContext
from gearproto.fuzz.wire import ReplyReader


def _req(ptype: int, *fields: bytes) -> bytes:
    return raw_packet(REQ, ptype, list(fields))


def _res(ptype: int, *fields: bytes) -> bytes:
    return raw_packet(RES, ptype, list(fields))


# ----------------------------------------------------------------- addresses


def test_loopback_targets_only_unless_allowed() -> None:
    assert str(parse_address("127.0.0.1:4730")) == "127.0.0.1:4730"
    assert str(parse_address("[::1]:4730")) == "[::1]:4730"
    with pytest.raises(AddressError, match="not a loopback address"):
        parse_address("192.0.2.10:4730")
    assert parse_address("192.0.2.10:4730", allow_remote=True).port == 4730


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1:0", "port must be"),
        ("127.0.0.1:99999", "port must be"),
        ("127.0.0.1:http", "port must be"),
        ("::1:4730", "write IPv6"),
        ("[::1]4730", r"\[IPV6\]:PORT"),
    ],
)
def test_bad_addresses_are_explained(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)


# ------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "192.0.2.1:4730"], "not a loopback address"),
        (["--target", "127.0.0.1:x"], "port must be"),
        (["--target", "127.0.0.1:4730", "--budget", "soon"], "invalid duration"),
        (["--target", "127.0.0.1:4730", "--budget", "0s"], "must be positive"),
        (["--target", "127.0.0.1:4730", "--seed", "-3"], "must not be negative"),
        (["--target", "127.0.0.1:4730", "--stateful-share", "2"], "between 0 and 1"),
        (["--target", "127.0.0.1:4730", "--shrink-share", "-1"], "between 0 and 1"),
        (["--target", "127.0.0.1:4730", "--shrink-share", "half"], "is not a number"),
        (["--target", "127.0.0.1:4730", "--minimize-time", "soon"], "invalid duration"),
        (["--target", "127.0.0.1:4730", "--families", "frames,nonsense"], "unknown family"),
        (["--target", "127.0.0.1:4730", "--pid", "999999999"], "no process"),
        (["--target", "127.0.0.1:4730", "--target2", "127.0.0.1:4730"], "different server"),
        ([], "--target"),
        (["replay", "--target", "127.0.0.1:4730"], "FILE"),
    ],
)
def test_bad_command_lines_get_a_message_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if "--target" in argv and argv[0] != "replay" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_replay_of_bad_files_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert cli.main(["replay", str(missing), "--target", "127.0.0.1:4730"]) == 2
    assert "no such file" in capsys.readouterr().err
    not_json = tmp_path / "x.json"
    not_json.write_text("{oops")
    assert cli.main(["replay", str(not_json), "--target", "127.0.0.1:4730"]) == 2
    assert "not a JSON reproducer" in capsys.readouterr().err
    other = tmp_path / "y.json"
    other.write_text(json.dumps({"format": "something-else"}))
    assert cli.main(["replay", str(other), "--target", "127.0.0.1:4730"]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_target_that_is_not_running_is_status_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.procs import free_port

    port = free_port()
    status = cli.main(["--target", f"127.0.0.1:{port}", "--out", str(tmp_path), "--quiet"])
    assert status == 3
    assert "does not answer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("250ms", 0.25), ("7", 7)]
)
def test_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == pytest.approx(seconds)


# ----------------------------------------------------------------- case files


def test_case_files_round_trip_every_step_kind() -> None:
    case = Case(
        (
            Connect(0),
            Connect(1, read=False),
            Send(0, b"\0REQ\xff\n\t"),
            Send(1, b"head", fill_byte=0x61, fill_count=1 << 20),
            Pause(5),
            Close(0, "rst"),
            Close(1, "half"),
        ),
        "frames.size",
        7,
        3,
        "a description",
        {"prefix": "fz7_3_"},
    )
    again = load_case_dict(json.loads(case.dumps()))
    assert again == case
    assert again.case_id == "frames.size/7/3"
    assert again.total_bytes == 7 + 4 + (1 << 20)
    assert len(case.dumps()) < 2000  # the fill is not spelled out


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"format": "nope"}, "not a fuzz case"),
        ({"format": "gearproto-fuzz-case/1", "steps": [{"op": "jump"}]}, "unknown step op"),
        ({"format": "gearproto-fuzz-case/1", "steps": [{"op": "send", "conn": 0}]}, "never opened"),
        (
            {
                "format": "gearproto-fuzz-case/1",
                "steps": [
                    {"op": "connect", "conn": 0},
                    {"op": "send", "conn": 0, "data": "\u20ac"},
                ],
            },
            "latin-1",
        ),
        ({"format": "gearproto-fuzz-case/1", "steps": [{"op": "pause", "ms": 10**9}]}, "ms"),
        (
            {
                "format": "gearproto-fuzz-case/1",
                "steps": [{"op": "connect", "conn": 0}, {"op": "close", "conn": 0, "how": "x"}],
            },
            "fin, rst or half",
        ),
    ],
)
def test_invalid_case_files_are_rejected(obj: object, message: str) -> None:
    with pytest.raises(CaseFormatError, match=message):
        load_case_dict(obj)


# ------------------------------------------------------------------ generators


def test_generation_is_reproducible_from_the_seed() -> None:
    ctx = GenContext(prefix=b"fz1_")
    first = [case_for(1, i, ctx).dumps() for i in range(200)]
    again = [case_for(1, i, GenContext(prefix=b"fz1_")).dumps() for i in range(200)]
    other = [case_for(2, i, ctx).dumps() for i in range(200)]
    assert first == again
    assert first != other


def test_generators_cover_every_packet_type_and_admin_command() -> None:
    ctx = GenContext(prefix=b"fz9_")
    types: set[int] = set()
    verbs: set[bytes] = set()
    generators: set[str] = set()
    for index in range(3000):
        case = case_for(9, index, ctx)
        generators.add(case.generator.split(".")[0])
        for conn in case.connections:
            data = case.sent_by(conn)
            if len(data) > 1 << 20:
                continue
            for frame in split_frames(data):
                if frame[:4] == REQ and len(frame) >= 12:
                    types.add(int.from_bytes(frame[4:8], "big"))
                elif frame[:1] != b"\0":
                    verbs.add(frame.split(b" ", 1)[0].strip().lower())
    requests = {int(t) for t, spec in PACKETS.items() if spec.direction is not Direction.RESPONSE}
    responses = {int(t) for t, spec in PACKETS.items() if spec.direction is Direction.RESPONSE}
    assert requests <= types
    assert responses <= types  # sent to the server, which must refuse them
    assert {0, 43, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF} <= types
    assert set(ADMIN_VERBS) <= verbs
    assert generators == {f.name.split(".")[0] for f in FAMILIES}


# --------------------------------------------------------------- reply matching


def _match(sent: bytes, received: bytes) -> ReplyMatcher:
    matcher = ReplyMatcher(shadow_parse(sent).requests)
    matcher.run(ReplyReader().feed(received))
    return matcher


def test_errors_are_matched_to_the_request_that_must_get_one() -> None:
    # SET_CLIENT_ID may draw INVALID_COMMAND, but type 5 must: the ERROR is type 5's.
    matcher = _match(
        _req(22, b"id") + _req(5) + _req(15, b"h"),
        _res(19, b"INVALID_COMMAND", b"x") + _res(20, b"h", b"0", b"0", b"0", b"0"),
    )
    assert matcher.result.missing == []
    assert matcher.result.violations == []


def test_errors_in_a_row_are_aligned() -> None:
    # ALL_YOURS may draw an ERROR, the two response-type packets must; three ERRORs come.
    sent = _req(24) + _req(6) + _req(8, b"H:1") + _req(15, b"h")
    received = _res(19, b"INVALID_COMMAND", b"x") * 3 + _res(20, b"h", b"0", b"0", b"0", b"0")
    matcher = _match(sent, received)
    assert matcher.result.violations == []
    assert matcher.result.missing == []


def test_skipped_reply_is_missing_and_unsolicited_reply_is_a_violation() -> None:
    matcher = _match(
        _req(41, b"u") + _req(16, b"e"),
        _res(17, b"e"),
    )
    assert [r.label for r in matcher.result.missing] == ["GET_STATUS_UNIQUE"]
    matcher = _match(_req(1, b"f"), _res(8, b"H:1"))
    assert matcher.result.violations == ["JOB_CREATED received, but no request owed it"]


def test_work_packets_for_jobs_of_others_are_wrong_client() -> None:
    matcher = _match(
        _req(7, b"f", b"", b"x"),
        _res(8, b"H:1") + _res(13, b"H:1", b"ok") + _res(13, b"H:2", b"not mine"),
    )
    assert len(matcher.result.wrong_client) == 1
    assert "H:2" in matcher.result.wrong_client[0]


def test_reply_frames_are_checked_against_the_table() -> None:
    replies = ReplyReader().feed(
        _req(17, b"x") + _res(7, b"f", b"", b"") + _res(19, b"no nul") + _res(6, b"body")
    )
    problems = [r.problem or "" for r in replies]
    assert "request magic" in problems[0]
    assert "request type" in problems[1]
    assert "NUL" in problems[2]
    assert "must be empty" in problems[3]


# ------------------------------------------------------------------ listings


def test_forged_rows_versus_escaped_names() -> None:
    owner = Ownership.from_names([b"fz_"], [b"fz_f\nfz_fake\t1\t2\t3"])
    raw = [b"fz_f", b"fz_fake\t1\t2\t3\t0\t0\t1"]
    assert forged_rows(admin.Status, raw, owner)
    escaped = [b"fz_f%0Afz_fake%091%092%093\t0\t0\t1"]
    assert forged_rows(admin.Status, escaped, owner) == []
    percent = Ownership.from_names([b"fz_"], [b"fz_f%s%n"])
    assert forged_rows(admin.Status, [b"fz_f%25s%25n\t0\t0\t1"], percent) == []
    assert forged_rows(admin.Status, [b"fz_f%s%n\t0\t0\t1"], percent) == []
    assert forged_rows(admin.Status, [b"fz_other\t0\t0\t1"], percent)
    others = [b"someone_else\t1\t0\t0", b"not a row of ours"]
    assert forged_rows(admin.Status, others, owner) == []


def test_workers_rows_with_split_function_names_are_forged() -> None:
    owner = Ownership.from_names([b"fz_"], [b"fz_w fake", b"fz_id"])
    assert forged_rows(admin.Workers, [b"12 127.0.0.1 fz_id : fz_w fake"], owner)
    assert forged_rows(admin.Workers, [b"12 127.0.0.1 fz_id : fz_w%20fake"], owner) == []


# ----------------------------------------------------------------- shrinking


def test_ddmin_finds_the_minimal_subsequence() -> None:
    items = list(range(40))
    assert ddmin(items, lambda kept: {3, 17, 31} <= set(kept)) == [3, 17, 31]
    assert ddmin(items, lambda kept: True) == []


def test_minimizer_shrinks_steps_frames_and_bytes() -> None:
    noise = _req(16, b"x" * 50) + _req(1, b"fn")
    case = Case(
        (
            Connect(0),
            Connect(1),
            Send(1, noise),
            Send(0, noise + b"xxBOOMyy" + noise),
            Pause(10),
            Close(1),
        ),
        "test",
    )

    def fails(candidate: Case) -> bool:
        return any(b"BOOM" in candidate.sent_by(c) for c in candidate.connections)

    minimal = Minimizer(fails, deadline=float("inf")).minimize(case)
    assert minimal.steps == (Connect(0), Send(0, b"BOOM"))


def test_minimizer_stops_at_its_budget() -> None:
    case = Case((Connect(0), *(Send(0, bytes([i])) for i in range(50))), "test")
    calls = 0

    def fails(candidate: Case) -> bool:
        nonlocal calls
        calls += 1
        return True

    Minimizer(fails, deadline=float("inf"), max_attempts=5).minimize(case)
    assert calls == 5


# -------------------------------------------------------------- differential


def test_differences_are_classified() -> None:
    ok = [("ECHO_RES", "a"), ("STATUS_RES", "")]
    assert _classify(
        ok, ok, ["ECHO_RES", "STATUS_RES"], ["ECHO_RES", "STATUS_RES"], "in-sync", "in-sync"
    ) == (None, 0)
    err_a = [("ERROR UNKNOWN_OPTION", "")]
    err_b = [("ERROR OTHER", "")]
    assert (
        _classify(err_a, err_b, ["ERROR UNKNOWN_OPTION"], ["ERROR OTHER"], "in-sync", "in-sync")[0]
        == "error-code"
    )
    swapped = [("STATUS_RES", ""), ("ECHO_RES", "a")]
    assert (
        _classify(
            ok,
            swapped,
            ["ECHO_RES", "STATUS_RES"],
            ["STATUS_RES", "ECHO_RES"],
            "in-sync",
            "in-sync",
        )[0]
        == "ordering"
    )
    other = [("ECHO_RES", "b"), ("STATUS_RES", "")]
    assert _classify(
        ok, other, ["ECHO_RES", "STATUS_RES"], ["ECHO_RES", "STATUS_RES"], "in-sync", "in-sync"
    ) == ("content", 0)
    assert _classify(ok, [], ["ECHO_RES", "STATUS_RES"], [], "in-sync", "closed")[0] == (
        "close-vs-reply"
    )


def test_shadow_marks_oversize_and_long_admin_lines() -> None:
    conn = shadow_parse(_req(1, b"f" * 9000) + b"status " + b"x" * 9000 + b"\n" + b"a b c d e f\n")
    labels = [(r.label, r.oversize) for r in conn.requests]
    assert labels[0] == ("CAN_DO", 9000)
    assert labels[1][0] == "admin:Status"
    assert labels[1][1] > 8192
    assert labels[2] == ("admin:too-many-tokens", 0)
    assert conn.framed
    assert shadow_parse(_req(16, b"x")[:-1]).incomplete == 12
    fatal = shadow_parse(b"\0REQ" + (0x80000000).to_bytes(4, "big") + b"\0\0\0\0")
    assert fatal.fatal is not None
    assert re.search("type", fatal.fatal)


def test_standalone_reproducer_script_is_valid_python() -> None:
    from gearproto.fuzz.findings import Finding, standalone_script
    from gearproto.fuzz.verdict import FindingClass, Verdict

    verdict = Verdict(FindingClass.CRASH, "k", 'bytes b"""\n{not a format}" in a summary')
    case = Case((Connect(0), Send(0, b"\0REQ\x00"), Pause(5), Close(0, "half")), "test")
    source = standalone_script(Finding(1, verdict, "target", case=case))
    compile(source, "reproduce.py", "exec")
    assert "send(0, b'\\x00REQ\\x00')" in source
    assert "close(0, 'half')" in source


GEARMAND_BACKTRACE = """
Begin stack trace, frames found: 12
?0  0x5593054c7176 in /usr/sbin/gearmand(+0x1e176) [0x5593054c7176]
?1  0x5593054b7ae7 in /usr/sbin/gearmand(+0xeae7) [0x5593054b7ae7]
?2  0x7f2dfe85a050 in /lib/x86_64-linux-gnu/libc.so.6(+0x3c050) [0x7f2dfe85a050]
?3  0x7f2dfe974219 in /lib/x86_64-linux-gnu/libc.so.6(+0x156219) [0x7f2dfe974219]
#6  0x7f2dfe934930 in __snprintf_chk at /lib/x86_64-linux-gnu/libc.so.6
?7  0x5593054cf63f in /usr/sbin/gearmand(+0x2663f) [0x5593054cf63f]
?8  0x5593054d2002 in /usr/sbin/gearmand(+0x29002) [0x5593054d2002]
?9  0x5593054cb150 in /usr/sbin/gearmand(+0x22150) [0x5593054cb150]
"""


def test_crashes_are_told_apart_by_the_servers_own_frames() -> None:
    from gearproto.fuzz.oracles import crash_signature

    assert crash_signature(GEARMAND_BACKTRACE, "exit status 1") == "bt:+0x2663f,+0x29002,+0x22150"
    python = (
        'Traceback (most recent call last):\n  File "/srv/app.py", line 12, in f\nKeyError: 1\n'
    )
    assert crash_signature(python, "exit status 1") == "py:app.py:12:KeyError"
    assert crash_signature("", "killed by SIGSEGV") == "killed by SIGSEGV"


# ------------------------------------------------------------------ shrink budget


def test_shrink_window_is_bounded_per_finding_and_in_total() -> None:
    from gearproto.fuzz.campaign import Campaign, CampaignConfig

    config = CampaignConfig(parse_address("127.0.0.1:9"), budget=100.0, shrink_share=0.3)
    campaign = Campaign(config)
    assert campaign._shrink_window(20.0) == 20.0  # 30 s of shrinking allowed in total
    campaign.shrink_spent = 25.0
    assert campaign._shrink_window(20.0) == 5.0
    campaign.shrink_spent = 31.0
    assert campaign._shrink_window(20.0) == 0.0


def test_differential_leaves_out_noop_position_and_foreign_status() -> None:
    from gearproto.fuzz.differential import reaction
    from gearproto.fuzz.execute import ConnObservation
    from gearproto.fuzz.shadow import ShadowConn
    from gearproto.fuzz.wire import ReplyReader

    def observed(*packets: bytes) -> ConnObservation:
        obs = ConnObservation(0, ShadowConn(), probe="answered")
        obs.replies = ReplyReader().feed(b"".join(packets))
        return obs

    noop = raw_packet(RES, 6, [])
    created = raw_packet(RES, 8, [b"H:1"])
    status = raw_packet(RES, 20, [b"H:1", b"1", b"0", b"0", b"0"])
    unknown = raw_packet(RES, 20, [b"H:1", b"0", b"0", b"0", b"0"])
    assert reaction(observed(noop, created)) == reaction(observed(created, noop))
    assert reaction(observed(noop, created)) != reaction(observed(created))
    assert reaction(observed(status)) == reaction(observed(unknown))
    assign = raw_packet(RES, 11, [b"H:1", b"f", b"data"])
    no_job = raw_packet(RES, 10, [])
    assert reaction(observed(assign)) != reaction(observed(no_job))
    assert reaction(observed(assign), shared=True) == reaction(observed(no_job), shared=True)
