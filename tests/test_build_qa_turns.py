"""outputs.understanding_turns: several questions about one image in one conversation (the image
in the first user turn only), every answer labelled for the AR model, the data valid."""
from __future__ import annotations

from build_fixtures import small_recipe, write_recipe
from nexus_gen.data.check import validate_shards
from nexus_gen.data.shards import iter_samples
from nexus_gen.edit.build import build


def _understanding(run):
    return [s for s in iter_samples(sorted((run / "data").glob("*.parquet"))) if s["task"] == "understanding"]


def test_multi_turn_understanding_samples(tmp_path):
    recipe = small_recipe(edits={"add": 2}, sources=[{"kind": "scenes", "name": "scenes", "count": 4,
                                                      "size": 64, "max_objects": 3}],
                          outputs={"generation": False, "understanding": True, "understanding_per_source": 2,
                                   "understanding_turns": 3}, splits={"train": 1.0}, languages=["en"])
    run = tmp_path / "run"
    build(write_recipe(tmp_path, recipe), run)
    samples = _understanding(run)
    assert validate_shards(run / "data").ok
    assert len(samples) >= 4
    for s in samples:
        msgs = s["messages"]
        roles = [m["role"] for m in msgs]
        turns = len(s["meta"]["qa_turns"])
        assert 1 <= turns <= 3 and roles == ["user", "assistant"] * turns
        assert msgs[0]["content"].startswith("<image>") and sum(m["content"].count("<image>") for m in msgs) == 1
        assert s["meta"]["qa"] == s["meta"]["qa_turns"][0]
        for k in range(turns):
            assert msgs[2 * k + 1]["content"] in ("yes", "no", "A", "B", "C", "D")
            assert "<image>" not in msgs[2 * k + 1]["content"]
    # one image encoding, several supervised answers: the AR stage labels each assistant turn
    from nexus_gen.train.stage_ar import ARStage

    st = ARStage({"path": "tiny"}, {})
    tok = st.processor.tokenizer
    s = next(x for x in samples if len(x["meta"]["qa_turns"]) == 3)
    enc = st.example(s)["enc"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    spans, cur = [], []
    for t in enc.labels:  # labelled runs, each closed by <|im_end|>
        if t >= 0 and t != end:
            cur.append(t)
        elif t == end:
            spans.append(tok.decode(cur))
            cur = []
    assert spans == [m["content"] for m in s["messages"] if m["role"] == "assistant"]


def test_one_turn_is_the_default_and_unchanged(tmp_path):
    recipe = small_recipe(edits={"add": 2}, sources=[{"kind": "scenes", "name": "scenes", "count": 2,
                                                      "size": 64, "max_objects": 3}],
                          outputs={"generation": False, "understanding": True, "understanding_per_source": 2},
                          splits={"train": 1.0}, languages=["en"])
    run = tmp_path / "run"
    build(write_recipe(tmp_path, recipe), run)
    for s in _understanding(run):
        assert len(s["messages"]) == 2 and "qa_turns" not in s["meta"]
