"""The generator registry: which families exist and how often each runs.

Case ``index`` of a campaign with seed ``S`` is fully determined by ``(S, index)``:
the family is drawn from a random generator seeded with both, and so are all the
case's bytes.  Nothing depends on time or on the target's answers, so ``--seed S``
replays the same sequence of cases.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from .case import Case
from .gen_admin import gen_admin, gen_mixed
from .gen_multi import gen_memory, gen_multi
from .gen_packets import gen_frames, gen_sequence, gen_single
from .gen_stream import gen_mutate, gen_split
from .values import GenContext

__all__ = ["FAMILIES", "Family", "case_for"]

GenFn = Callable[[random.Random, GenContext, int, int], Case]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    weight: int
    make: GenFn
    doc: str


FAMILIES: tuple[Family, ...] = (
    Family("valid.single", 14, gen_single, "random requests with unusual field values"),
    Family("valid.sequence", 16, gen_sequence, "valid-but-unusual request sequences"),
    Family("frames", 18, gen_frames, "malformed frames: magic, type, size, NULs, limits"),
    Family("admin", 10, gen_admin, "admin lines with 0-7 tokens, odd endings, long lines"),
    Family("admin.mixed", 6, gen_mixed, "binary packets and admin lines interleaved"),
    Family("mutate", 14, gen_mutate, "byte-level mutations of valid streams"),
    Family("split", 6, gen_split, "valid streams split at every boundary"),
    Family("multi", 8, gen_multi, "multi-connection scenarios: joins, drops, slow peers"),
    Family("memory", 1, gen_memory, "huge declared bodies streamed in part"),
)


def case_for(
    seed: int, index: int, ctx: GenContext, families: tuple[Family, ...] = FAMILIES
) -> Case:
    """Case number ``index`` of the campaign with ``seed``."""
    rng = random.Random(f"{seed}:{index}")
    weights = [f.weight for f in families]
    family = rng.choices(families, weights)[0]
    case = family.make(rng, ctx, seed, index)
    notes = {**case.notes, "prefix": ctx.case_prefix(index).decode("latin-1")}
    return replace(case, notes=notes)
