"""Every ```python block in README.md and docs/**/*.md runs, as a script, and succeeds.

Each block runs in a fresh interpreter with ``GEARMAN_SERVER=127.0.0.1:<port>`` naming
a fresh job server started for it (the real gearmand), so examples that talk to a
server are executed against a real one.  Blocks must finish on their own within the
timeout; examples print what they show, and a failing block fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.procs import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for index, match in enumerate(FENCE.finditer(text)):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}#{index}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_docs_have_examples() -> None:
    assert BLOCKS, "README.md and docs/ must contain executed python examples"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_example_runs(
    where: str, code: str, gearmand_server: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, GEARMAN_SERVER=f"{gearmand_server.host}:{gearmand_server.port}")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
