"""Filter policies: the built-in YAMLs load with the paper thresholds; `select` keeps exactly the
rows a policy admits and reports what each rule removed; bad policies fail before any work."""
import math

import pandas as pd
import pyarrow as pa
import pytest

from nexus_gen.scoring.policy import (FILTERS_DIR, PolicyError, load_policy, policy_for_edit_type,
                                      policy_from_dict, select)

IP2P = {"clip_t_source": 0.2, "clip_t": 0.2, "clip_dir": 0.2, "clip_i": 0.7}


def _table():
    nan = float("nan")
    return pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f", "g"],
        "clip_t_source": [0.25, 0.19, 0.30, 0.30, 0.30, 0.21, 0.22],
        "clip_t": [0.22, 0.30, 0.20, 0.30, 0.30, 0.24, 0.23],
        "clip_dir": [0.30, 0.30, 0.25, 0.10, nan, 0.21, 0.40],
        "clip_i": [0.80, 0.90, 0.69, 0.90, 0.90, 0.70, 0.75],
        "prompt_id": ["p", "p", "p", "q", "q", "q", "p"],
    })


def test_builtin_policies_load_and_use_the_instructpix2pix_thresholds():
    names = sorted(p.stem for p in FILTERS_DIR.glob("*.yaml"))
    assert {"default", "add", "remove", "change", "style"} <= set(names)
    for n in names:
        pol = load_policy(n)
        got = {r.column: r.value for r in pol.rules if r.column in IP2P}
        assert got == IP2P, n
        assert all(r.op == ">=" for r in pol.rules if r.column in IP2P)
        assert pol.top_k.column == "clip_dir" and pol.top_k.k == 4
    assert policy_for_edit_type("add").name == "add"
    assert policy_for_edit_type("replace").name == "change"
    assert policy_for_edit_type("zoom").name == "default"


def test_select_keeps_exactly_the_admitted_rows_and_counts_removals():
    pol = policy_from_dict({"name": "t", "rules": [
        {"name": "src", "column": "clip_t_source", "op": ">=", "value": 0.2},
        {"name": "tgt", "column": "clip_t", "op": ">=", "value": 0.2},
        {"name": "dir", "column": "clip_dir", "op": ">=", "value": 0.2},
        {"name": "img", "column": "clip_i", "op": ">=", "value": 0.7}]})
    kept, rep = select(_table(), pol)
    # by hand: b fails src; c fails img (0.69); d fails dir; e has no dir score (NaN fails)
    assert list(kept["id"]) == ["a", "f", "g"]
    assert rep.rows_in == 7 and rep.rows_out == 3
    assert [(r.name, r.removed, r.failed) for r in rep.rules] == [
        ("src", 1, 1), ("tgt", 0, 0), ("dir", 2, 2), ("img", 1, 1)]
    assert sum(r.removed for r in rep.rules) == rep.rows_in - rep.rows_out


def test_top_k_keeps_the_best_per_group_after_the_rules():
    pol = policy_from_dict({"name": "t", "rules": [
        {"column": "clip_i", "op": ">=", "value": 0.7}],
        "top_k": {"column": "clip_dir", "k": 1, "group_by": "prompt_id"}})
    kept, rep = select(_table(), pol)
    # after clip_i: a b d e f g; best clip_dir in p: g (0.40); in q: f (0.21; d 0.10, e NaN)
    assert sorted(kept["id"]) == ["f", "g"]
    assert rep.rules[-1].name == "top_1" and rep.rules[-1].removed == 4


def test_select_on_arrow_tables_returns_an_arrow_table_in_row_order():
    kept, rep = select(pa.Table.from_pandas(_table(), preserve_index=False), "default")
    assert isinstance(kept, pa.Table)
    # b fails the source caption, c clip_i, d clip_dir; e has no clip_dir score: the shipped
    # caption rules skip a null (`if_missing: skip`), so clip_dir does not judge it
    assert kept.column("id").to_pylist() == ["a", "e", "f", "g"]
    by = {r.name: r for r in rep.rules}
    assert by["directional_clip"].not_judged == 1 and by["directional_clip"].removed == 1
    assert by["top_4"].skipped and "source_key" in by["top_4"].note  # no source_key column


def test_missing_columns_refuse_the_table_unless_the_rule_may_be_skipped():
    t = _table().drop(columns=["clip_i"])
    with pytest.raises(PolicyError, match="clip_i"):
        select(t, "default")
    pol = policy_from_dict({"name": "t", "rules": [
        {"name": "outside", "column": "l1_outside", "op": "<=", "value": 0.02, "if_missing": "skip"},
        {"name": "dir", "column": "clip_dir", "op": ">", "value": 0.2}]})
    kept, rep = select(t, pol)
    assert rep.rules[0].skipped and list(kept["id"]) == ["a", "b", "c", "f", "g"]


def test_equality_rules_on_flags():
    t = pd.DataFrame({"id": ["a", "b", "c"], "object_present": [False, True, None]})
    kept, _ = select(t, policy_from_dict({"name": "rm", "rules": [
        {"column": "object_present", "op": "==", "value": False}]}))
    assert list(kept["id"]) == ["a"]


@pytest.mark.parametrize("bad, msg", [
    ({"name": "x", "rules": [{"column": "clip_t", "op": "=>", "value": 0.2}]}, "op"),
    ({"name": "x", "rules": [{"column": "clip_t", "op": ">=", "value": "high"}]}, "number"),
    ({"name": "x", "rules": [{"column": "clip_t", "op": ">=", "value": 0.2, "thresh": 1}]}, "unknown"),
    ({"name": "x", "rules": [{"column": "clip_t", "op": ">="}]}, "value"),
    ({"name": "x", "rules": []}, "at least one"),
    ({"rules": [{"column": "clip_t", "op": ">=", "value": 0.2}]}, "name"),
    ({"name": "x", "top_k": {"column": "clip_dir", "k": 0}}, "positive"),
    ({"name": "x", "rules": [{"column": "c", "op": ">=", "value": 1, "if_missing": "maybe"}]}, "if_missing"),
])
def test_bad_policies_fail_with_a_named_reason(bad, msg):
    with pytest.raises(PolicyError, match=msg):
        policy_from_dict(bad, "bad.yaml")


def test_bad_policy_file_and_unknown_name(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(PolicyError, match="p.yaml: not valid YAML"):
        load_policy(p)
    with pytest.raises(PolicyError, match=r"no filter policy file at .*no_such_policy.yaml \(built-in filter "
                                          r"policy files: add, change, default, remove, style\)"):
        load_policy("no_such_policy")


def test_a_null_score_follows_the_rules_if_missing():
    t = pd.DataFrame({"id": ["a", "b", "c"], "x": [0.5, None, 0.1]})

    def run(if_missing):
        return select(t, policy_from_dict({"name": "t", "rules": [
            {"name": "x", "column": "x", "op": ">=", "value": 0.3, "if_missing": if_missing}]}))

    kept, rep = run("skip")  # b is not judged: kept
    assert list(kept["id"]) == ["a", "b"] and rep.rules[0].not_judged == 1 and not rep.rules[0].skipped
    kept, rep = run(None)  # the default fails a null
    assert list(kept["id"]) == ["a"] and rep.rules[0].failed == 2


def _caption_less():
    """What `nexus-gen score` writes for edits without captions (the reference's own examples)."""
    return pd.DataFrame({"id": ["e0", "e1", "g0"], "task": ["editing", "editing", "generation"],
                         "source_key": ["s", "s", "t"],
                         "clip_t": [None, None, 0.31], "clip_t_source": [None, None, None],
                         "clip_dir": [None, None, None], "clip_i": [0.9, 0.6, None]})


def test_rules_that_judge_no_row_are_reported_loudly(caplog):
    with caplog.at_level("WARNING", logger="nexus_gen.scoring.policy"):
        kept, rep = select(_caption_less(), "add")
    # the caption rules and the AnyEdit rules judged nothing; clip_i removed e1; the
    # generation row is another task and passes through unjudged
    assert list(kept["id"]) == ["e0", "g0"] and rep.rows_other_task == 1
    d = rep.to_dict()
    assert set(d["skipped_rules"]) == {"source_matches_caption", "target_matches_caption",
                                       "directional_clip", "outside_mask_unchanged",
                                       "object_found_in_mask", "top_4"}
    notes = {r["name"]: r["note"] for r in d["rules"]}
    assert "meta.captions" in notes["directional_clip"]
    assert "edit masks" in notes["outside_mask_unchanged"] and "nexus-gen score" in notes["outside_mask_unchanged"]
    assert "detector" in notes["object_found_in_mask"]
    assert len(d["warnings"]) == 6 and d["removed_all"] is False
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert logged == d["warnings"] and any("outside_mask_unchanged" in m for m in logged)


def test_a_policy_that_removes_every_row_says_so(caplog):
    pol = policy_from_dict({"name": "strict", "rules": [
        {"name": "img", "column": "clip_i", "op": ">=", "value": 0.95}]})
    with caplog.at_level("WARNING", logger="nexus_gen.scoring.policy"):
        kept, rep = select(pa.Table.from_pandas(_table(), preserve_index=False), pol)
    assert kept.num_rows == 0 and rep.removed_all and rep.to_dict()["removed_all"] is True
    assert any("removed every row (7 of 7)" in r.getMessage() and "'img'" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_selection_on_a_built_triplet_table_groups_by_source_key():
    """The build's triplet table: nullable flags, best 4 by clip_dir per source image."""
    n = 7
    t = pa.table({
        "id": [f"t{i}" for i in range(n)],
        "source_key": ["A"] * 6 + ["B"],
        "edit_type": ["add"] * n, "direction": ["forward"] * n,
        "clip_t": [0.3] * n, "clip_t_source": [0.3] * n, "clip_i": [0.8] * n,
        "clip_dir": [0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.21],
        "dino": [0.9] * n, "l1": [0.1] * n, "l1_inside": [0.3] * n,
        "l1_outside": [0.01, 0.01, 0.01, 0.05, 0.01, 0.01, None],
        "object_in_mask": pa.array([True, None, True, True, True, False, True], pa.bool_()),
        "object_present": pa.array([None] * n, pa.bool_()),
    })
    kept, rep = select(t, "add")
    # t3 fails l1_outside, t5 object_in_mask; t1's null flag and t6's null l1 are not judged;
    # source A keeps its best 4 of t0 t1 t2 t4 (all), B keeps t6
    assert kept.column("id").to_pylist() == ["t0", "t1", "t2", "t4", "t6"]
    more = pa.concat_tables([t, t.slice(0, 2).set_column(0, "id", pa.array(["u0", "u1"]))])
    kept, rep = select(more, "add")  # A has 6 admitted rows: t0 u0 (0.50) t1 u1 (0.45) stay
    assert kept.column("id").to_pylist() == ["t0", "t1", "t6", "u0", "u1"]
    assert rep.rules[-1].name == "top_4" and rep.rules[-1].removed == 2


def test_validation_errors_name_the_file_the_rule_and_the_key():
    with pytest.raises(PolicyError) as e:
        policy_from_dict({"name": "x", "rules": [
            {"name": "ok", "column": "clip_t", "op": ">=", "value": 0.2},
            {"name": "dir", "column": "clip_dir", "op": ">=", "value": 0.2, "thresh": 1}]}, "p.yaml")
    assert str(e.value) == "p.yaml: rule 1 ('dir'): unknown key 'thresh'"
    with pytest.raises(PolicyError, match=r"^p.yaml: policy: 'top_k.k': .*integer"):
        policy_from_dict({"name": "x", "top_k": {"column": "clip_dir", "k": "4"}}, "p.yaml")
