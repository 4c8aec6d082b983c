"""The build report section: counts from run.json, the grid and score plots as real PNGs, score
values read from the triplet table (checked against pandas)."""
from __future__ import annotations

import io
import json

import pandas as pd
from PIL import Image

from build_fixtures import small_recipe, write_recipe
from eval.report_build import build_sections, score_columns
from nexus_gen.edit.build import build


def test_build_sections(tmp_path):
    recipe = write_recipe(tmp_path, small_recipe(sources=[{"kind": "scenes", "count": 4, "size": 64}],
                                                 edits={"add": 2, "style": 2}, splits={"train": 1.0}))
    build(recipe, tmp_path / "run")
    (sec,) = build_sections(tmp_path / "run")
    rows = {r[0]: r[1:] for r in sec.tables[0].rows}
    assert rows == {"add": [2, 2, 0], "style": [2, 2, 0]}
    names = [f.name for f in sec.figures]
    assert names == ["small-triplets", "small-scores"]
    grid = Image.open(io.BytesIO(sec.figures[0].png))
    assert grid.format == "PNG" and grid.height > 2 * 128
    df = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "run" / "triplets").glob("*.parquet")))
    vals = score_columns(tmp_path / "run" / "triplets")
    for et, g in df.groupby("edit_type"):
        assert sorted(vals[et]["l1"]) == sorted(g["l1"].dropna().tolist())
    assert "4 planned triplets = 4 built + 0 rejected" in sec.text[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["counts"]["triplets"] == 4
