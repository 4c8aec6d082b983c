"""Filter policies: declarative rules (YAML, one file per edit type in `datasets_spec/filters/`)
applied to an already-scored table, without recomputing any score.

A policy: `name`, `edit_types`, optional `description`/`sources`, `rules` (each
`{name, column, op, value, if_missing}` with op one of >=, >, <=, <, ==, !=; a missing value
(None/NaN) fails the rule; `if_missing: skip` skips the rule when the table lacks the column,
else the table is refused before filtering), optional `top_k: {column, k, group_by, if_missing}`
(keep the k best rows per group, highest first). `select` reports how many rows each rule removed."""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

FILTERS_DIR = Path(__file__).resolve().parents[2] / "datasets_spec" / "filters"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
       "==": operator.eq, "!=": operator.ne}


class PolicyError(ValueError):
    """A policy file or a table is not usable; the message names the file/rule/column."""


@dataclass(frozen=True)
class Rule:
    """Keep rows whose `column` `op` `value` holds."""

    name: str
    column: str
    op: str
    value: Any
    if_missing: str = "error"  # "error" | "skip"


@dataclass(frozen=True)
class TopK:
    """Keep the `k` rows with the highest `column` within each `group_by` group (all rows if None)."""

    column: str
    k: int
    group_by: Optional[str] = None
    if_missing: str = "error"


@dataclass(frozen=True)
class FilterPolicy:
    name: str
    rules: tuple[Rule, ...]
    edit_types: tuple[str, ...] = ()
    top_k: Optional[TopK] = None
    description: str = ""


@dataclass
class RuleReport:
    name: str
    column: str
    removed: int  # rows this rule removed, after the rules before it (sums to the total removed)
    failed: int  # rows of the whole input that fail this rule on their own
    skipped: bool = False


@dataclass
class SelectionReport:
    policy: str
    rows_in: int
    rows_out: int
    rules: list[RuleReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rules": [r.__dict__ for r in self.rules]}


def _where(src: str, ctx: str) -> str:
    return f"{src}: {ctx}" if src else ctx


def _check_if_missing(v: Any, where: str) -> str:
    v = v if v is not None else "error"
    if v not in ("error", "skip"):
        raise PolicyError(f"{where}: if_missing must be 'error' or 'skip', got {v!r}")
    return v


def policy_from_dict(d: Any, source: str = "") -> FilterPolicy:
    """Validate a parsed policy mapping (so a bad policy fails before any work)."""
    if not isinstance(d, dict):
        raise PolicyError(_where(source, f"a policy must be a mapping, got {type(d).__name__}"))
    unknown = set(d) - {"name", "edit_types", "description", "sources", "rules", "top_k"}
    if unknown:
        raise PolicyError(_where(source, f"unknown keys {sorted(unknown)}"))
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(_where(source, "'name' must be a non-empty string"))
    rules_in = d.get("rules") or []
    if not isinstance(rules_in, list):
        raise PolicyError(_where(source, "'rules' must be a list"))
    rules, seen = [], set()
    for i, r in enumerate(rules_in):
        where = _where(source, f"rule {i}")
        if not isinstance(r, dict):
            raise PolicyError(f"{where}: must be a mapping")
        bad = set(r) - {"name", "column", "op", "value", "if_missing", "why"}
        if bad:
            raise PolicyError(f"{where}: unknown keys {sorted(bad)}")
        col, op = r.get("column"), r.get("op")
        if not isinstance(col, str) or not col:
            raise PolicyError(f"{where}: 'column' must be a non-empty string")
        if op not in OPS:
            raise PolicyError(f"{where}: 'op' must be one of {list(OPS)}, got {op!r}")
        if "value" not in r:
            raise PolicyError(f"{where}: 'value' is missing")
        val = r["value"]
        if op in ("<", "<=", ">", ">=") and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise PolicyError(f"{where}: {op} needs a number, got {val!r}")
        rname = r.get("name") or f"{col} {op} {val}"
        if rname in seen:
            raise PolicyError(f"{where}: duplicate rule name {rname!r}")
        seen.add(rname)
        rules.append(Rule(rname, col, op, val, _check_if_missing(r.get("if_missing"), where)))
    top = d.get("top_k")
    topk = None
    if top is not None:
        where = _where(source, "top_k")
        if not isinstance(top, dict) or set(top) - {"column", "k", "group_by", "if_missing"}:
            raise PolicyError(f"{where}: must be a mapping with column, k, group_by, if_missing")
        k = top.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise PolicyError(f"{where}: 'k' must be a positive integer, got {k!r}")
        if not isinstance(top.get("column"), str):
            raise PolicyError(f"{where}: 'column' must be a string")
        gb = top.get("group_by")
        if gb is not None and not isinstance(gb, str):
            raise PolicyError(f"{where}: 'group_by' must be a string")
        topk = TopK(top["column"], k, gb, _check_if_missing(top.get("if_missing"), where))
    if not rules and topk is None:
        raise PolicyError(_where(source, "a policy needs at least one rule or a top_k"))
    et = d.get("edit_types") or []
    if isinstance(et, str):
        et = [et]
    if not all(isinstance(e, str) for e in et):
        raise PolicyError(_where(source, "'edit_types' must be a list of strings"))
    return FilterPolicy(name, tuple(rules), tuple(et), topk, str(d.get("description") or ""))


def load_policy(path_or_name: Union[str, Path]) -> FilterPolicy:
    """A policy from a YAML file, or by name from `datasets_spec/filters/<name>.yaml`."""
    import yaml

    p = Path(path_or_name)
    if not p.suffix and not p.exists():
        p = FILTERS_DIR / f"{path_or_name}.yaml"
    if not p.is_file():
        avail = sorted(x.stem for x in FILTERS_DIR.glob("*.yaml"))
        raise PolicyError(f"no filter policy at {p} (built-in policies: {', '.join(avail)})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolicyError(f"{p}: invalid YAML: {exc}") from exc
    return policy_from_dict(data, str(p))


def policy_for_edit_type(edit_type: str) -> FilterPolicy:
    """The built-in policy whose `edit_types` lists `edit_type`, else the `default` policy."""
    for p in sorted(FILTERS_DIR.glob("*.yaml")):
        pol = load_policy(p)
        if edit_type in pol.edit_types:
            return pol
    return load_policy("default")


def _passes(values: pd.Series, op: str, value: Any) -> np.ndarray:
    fn = OPS[op]
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue  # a missing score never passes
        try:
            out[i] = bool(fn(v, value))
        except TypeError:
            out[i] = False
    return out


def select(table, policy: Union[FilterPolicy, str, Path]):
    """Apply `policy` to a scored table (pandas DataFrame or pyarrow Table) without recomputing.

    Returns `(kept_table, SelectionReport)`; the kept table has the input's type and row order."""
    import pyarrow as pa

    pol = policy if isinstance(policy, FilterPolicy) else load_policy(policy)
    is_arrow = isinstance(table, pa.Table)
    df = table.to_pandas() if is_arrow else table
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"select takes a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")
    cols = set(df.columns)
    missing = [r.column for r in pol.rules if r.if_missing == "error" and r.column not in cols]
    if pol.top_k and pol.top_k.if_missing == "error":
        missing += [c for c in (pol.top_k.column, pol.top_k.group_by) if c and c not in cols]
    if missing:
        raise PolicyError(f"policy {pol.name!r} needs column(s) {sorted(set(missing))} that the table "
                          f"lacks (it has {sorted(cols)})")
    n = len(df)
    keep = np.ones(n, dtype=bool)
    report = SelectionReport(pol.name, n, 0)
    for r in pol.rules:
        if r.column not in cols:
            log.info("policy %s: rule %r skipped (no column %r)", pol.name, r.name, r.column)
            report.rules.append(RuleReport(r.name, r.column, 0, 0, skipped=True))
            continue
        ok = _passes(df[r.column], r.op, r.value)
        report.rules.append(RuleReport(r.name, r.column, int((keep & ~ok).sum()), int((~ok).sum())))
        keep &= ok
    tk = pol.top_k
    if tk is not None:
        if tk.column not in cols or (tk.group_by and tk.group_by not in cols):
            report.rules.append(RuleReport(f"top_{tk.k}", tk.column, 0, 0, skipped=True))
        else:
            cand = df[keep]
            score = pd.to_numeric(cand[tk.column], errors="coerce").fillna(-np.inf)
            order = pd.DataFrame({"s": score.values, "pos": np.arange(len(cand)),
                                  "g": cand[tk.group_by].values if tk.group_by else 0})
            order = order.sort_values(["s", "pos"], ascending=[False, True], kind="stable")
            top = order.groupby("g", sort=False, dropna=False).head(tk.k)["pos"].to_numpy()
            chosen = np.zeros(len(cand), dtype=bool)
            chosen[top] = True
            new_keep = keep.copy()
            new_keep[np.flatnonzero(keep)] = chosen
            report.rules.append(RuleReport(f"top_{tk.k}", tk.column, int(keep.sum() - chosen.sum()), 0))
            keep = new_keep
    report.rows_out = int(keep.sum())
    log.info("policy %s kept %d of %d rows", pol.name, report.rows_out, n)
    kept = table.filter(pa.array(keep)) if is_arrow else df[keep]
    return kept, report
