"""GenEval's relative-position rule as the scenes world uses it (one implementation, in
`nexus_gen.scoring.position`, shared with the GenEval scorer)."""
from __future__ import annotations

from nexus_gen.scoring.position import POSITION_THRESHOLD as POSITION_MARGIN
from nexus_gen.scoring.position import RELATIONS, relative_position

Box = tuple[float, float, float, float]


def relations(a: Box, b: Box, margin: float = POSITION_MARGIN) -> set[str]:
    """Every relation in which box `a` stands to box `b` under GenEval's rule."""
    return relative_position(a, b, margin)


__all__ = ["RELATIONS", "POSITION_MARGIN", "relations"]
