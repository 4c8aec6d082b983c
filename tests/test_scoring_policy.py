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
    assert kept.column("id").to_pylist() == ["a", "f", "g"]


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
    with pytest.raises(PolicyError, match="invalid YAML"):
        load_policy(p)
    with pytest.raises(PolicyError, match="built-in policies"):
        load_policy("no_such_policy")
