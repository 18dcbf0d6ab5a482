"""docs/protocol.md's packet table is generated from ``gearproto.PACKETS``; keep it in sync.

If this test fails after a change to the table, regenerate the block with

    GEARPROTO_UPDATE_DOCS=1 pytest tests/test_core_protocol_doc.py
"""

from __future__ import annotations

import os
from pathlib import Path

from gearproto import PACKETS, Direction, FieldKind
from gearproto.events import EVENT_CLASSES, SUBMIT_VARIANTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BEGIN = "<!-- packet table: generated from gearproto.PACKETS, do not edit -->"
END = "<!-- end of packet table -->"

_DIRECTION = {
    Direction.REQUEST: "`\\0REQ` to server",
    Direction.RESPONSE: "`\\0RES` from server",
    Direction.BOTH: "both (worker → server → client)",
}


def render_table() -> str:
    lines = [
        "| # | Packet | Magic / direction | Fields on the wire | Event | What it does |",
        "|---|---|---|---|---|---|",
    ]
    for ptype, spec in PACKETS.items():
        fields = []
        for index, field in enumerate(spec.fields):
            last = index == len(spec.fields) - 1
            kind = "" if field.kind in (FieldKind.DATA,) else f" ({field.kind.value})"
            fields.append(f"`{field.name}`{kind}" + ("" if last else " `\\0`"))
        cls = EVENT_CLASSES[ptype].__name__
        if ptype in SUBMIT_VARIANTS:
            priority, background = SUBMIT_VARIANTS[ptype]
            cls += f" (priority={priority.name}, background={background})"
        elif cls == "SubmitReduceJob":
            cls += f" (background={ptype.name.endswith('BACKGROUND')})"
        lines.append(
            f"| {int(ptype)} | {ptype.name} | {_DIRECTION[spec.direction]} | "
            f"{' '.join(fields) or '—'} | `{cls}` | {spec.summary} |"
        )
    return "\n".join(lines)


def test_packet_table_in_docs_is_current() -> None:
    text = DOC.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    stop = text.index(END)
    expected = "\n" + render_table() + "\n"
    if os.environ.get("GEARPROTO_UPDATE_DOCS") and text[start:stop] != expected:
        DOC.write_text(text[:start] + expected + text[stop:])
        text = DOC.read_text()
    assert text[start:stop] == expected, "regenerate: GEARPROTO_UPDATE_DOCS=1 pytest " + __file__


def test_every_type_is_documented() -> None:
    text = DOC.read_text()
    for ptype in PACKETS:
        assert f"| {int(ptype)} | {ptype.name} |" in text
