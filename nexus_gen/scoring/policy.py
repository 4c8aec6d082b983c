"""Filter policies: declarative rules (YAML, one file per edit type in `datasets_spec/filters/`)
applied to an already-scored table, without recomputing any score.

A policy: `name`, `edit_types`, optional `task`/`description`/`sources`, `rules` (each
`{name, column, op, value, if_missing}` with op one of >=, >, <=, <, ==, !=), optional
`top_k: {column, k, group_by, if_missing}` (keep the k best rows per group, highest first).
`if_missing` says what a rule does where its score is missing: `error` (the default) refuses a
table that lacks the column and fails a row whose value is null/NaN; `skip` skips the rule when
the column is absent and does not judge a row whose value is null (nor rank it, for top_k: it
is kept). With `task` set, rows of a table's `task` column that name another task pass through
unjudged. `select` reports how many rows each rule removed and left unjudged, and warns loudly
(log WARNING, `SelectionReport.warnings`) when a rule judged no row or the policy removed every
row. Validation is pydantic; errors name the file, the rule and the key."""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

FILTERS_DIR = Path(__file__).resolve().parents[2] / "datasets_spec" / "filters"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
       "==": operator.eq, "!=": operator.ne}
# Where a column comes from, for the report when a table lacks it or holds only nulls.
COLUMN_SOURCES = {
    "l1_outside": "AnyEdit check: needs edit masks, which `nexus-gen score` does not have (shards "
                  "carry no masks); the build's triplet table has it",
    "l1_inside": "needs edit masks, which `nexus-gen score` does not have; the build's triplet "
                 "table has it",
    "object_in_mask": "AnyEdit check from the build's edit verifier (a detector); `nexus-gen "
                      "score` does not compute it",
    "object_present": "AnyEdit check from the build's edit verifier (a detector); `nexus-gen "
                      "score` does not compute it",
    "clip_t": "needs the target caption (meta.captions)",
    "clip_t_source": "needs the source caption (meta.captions)",
    "clip_dir": "needs both captions (meta.captions)",
    "source_key": "the source image's key, written by `nexus-gen score` and the build",
}


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
    task: Optional[str] = None  # rows of another task (a table's `task` column) are not judged


@dataclass
class RuleReport:
    name: str
    column: str
    removed: int  # rows this rule removed, after the rules before it (sums to the total removed)
    failed: int  # rows of the whole input that fail this rule on their own
    skipped: bool = False  # the rule judged no row (column absent, or null in every row)
    not_judged: int = 0  # rows left unjudged (null value, `if_missing: skip`)
    note: str = ""  # why it was skipped, where the column comes from


@dataclass
class SelectionReport:
    policy: str
    rows_in: int
    rows_out: int
    rules: list[RuleReport] = field(default_factory=list)
    rows_other_task: int = 0  # rows of another task than the policy's, passed through unjudged
    warnings: list[str] = field(default_factory=list)

    @property
    def skipped_rules(self) -> list[str]:
        """Names of the rules (and top_k) that judged no row."""
        return [r.name for r in self.rules if r.skipped]

    @property
    def removed_all(self) -> bool:
        """The policy removed every row it judged (and there were some)."""
        return self.rows_in - self.rows_other_task > 0 and self.rows_out == self.rows_other_task

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rows_other_task": self.rows_other_task, "removed_all": self.removed_all,
                "skipped_rules": self.skipped_rules, "warnings": list(self.warnings),
                "rules": [dict(r.__dict__) for r in self.rules]}


# -- validation (pydantic): the YAML's shape, turned into the dataclasses above
IfMissing = Literal["error", "skip"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("if_missing", mode="before", check_fields=False)
    @classmethod
    def _default_if_missing(cls, v: Any) -> Any:
        return "error" if v is None else v


class _RuleModel(_Strict):
    name: Optional[str] = None
    column: str = Field(min_length=1)
    op: Literal[">=", ">", "<=", "<", "==", "!="]
    value: Any
    if_missing: IfMissing = "error"
    why: Optional[str] = None

    @model_validator(mode="after")
    def _number_for_order(self) -> "_RuleModel":
        v = self.value
        if self.op in ("<", "<=", ">", ">=") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{self.op} needs a number, got {v!r}")
        return self


class _TopKModel(_Strict):
    column: str = Field(min_length=1)
    k: int
    group_by: Optional[str] = None
    if_missing: IfMissing = "error"

    @field_validator("k")
    @classmethod
    def _positive(cls, k: int) -> int:
        if k < 1:
            raise ValueError(f"'k' must be a positive integer, got {k!r}")
        return k


class _PolicyModel(_Strict):
    name: str = Field(min_length=1)
    edit_types: list[str] = []
    task: Optional[str] = None
    description: Optional[str] = None
    sources: Optional[list[Any]] = None
    rules: list[dict[str, Any]] = []  # each validated as a _RuleModel, so errors name the rule
    top_k: Optional[_TopKModel] = None

    @field_validator("edit_types", "rules", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return [] if v is None else [v] if isinstance(v, str) else v


def _explain(exc: ValidationError, where: str) -> PolicyError:
    """One line naming the place (file, rule, key) and the problem of each validation error."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        key = ".".join(loc) if loc else ""
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {key!r}"
        elif err["type"] == "missing":
            msg = f"{key!r} is missing"
        elif err["type"] == "literal_error" and loc[-1:] == ["op"]:
            msg = f"'op' must be one of {list(OPS)}, got {err.get('input')!r}"
        elif err["type"] == "value_error":
            msg = f"{key + ': ' if key else ''}{str(err['msg']).removeprefix('Value error, ')}"
        else:
            msg = f"{key!r}: {err['msg']} (got {err.get('input')!r})"
        parts.append(msg)
    return PolicyError(f"{where}: {'; '.join(parts)}")


def policy_from_dict(d: Any, source: str = "") -> FilterPolicy:
    """Validate a parsed policy mapping (so a bad policy fails before any work)."""
    if not isinstance(d, dict):
        raise PolicyError(_where(source, f"a policy must be a mapping, got {type(d).__name__}"))
    try:
        pm = _PolicyModel.model_validate(d)
    except ValidationError as exc:
        raise _explain(exc, _where(source, "policy")) from None
    rules, seen = [], set()
    for i, r in enumerate(pm.rules):
        rname = r.get("name") if isinstance(r, dict) else None
        where = _where(source, f"rule {i}" + (f" ({rname!r})" if isinstance(rname, str) else ""))
        if not isinstance(r, dict):
            raise PolicyError(f"{where}: must be a mapping")
        try:
            rm = _RuleModel.model_validate(r)
        except ValidationError as exc:
            raise _explain(exc, where) from None
        rname = rm.name or f"{rm.column} {rm.op} {rm.value}"
        if rname in seen:
            raise PolicyError(f"{where}: duplicate rule name {rname!r}")
        seen.add(rname)
        rules.append(Rule(rname, rm.column, rm.op, rm.value, rm.if_missing))
    tk = pm.top_k
    topk = TopK(tk.column, tk.k, tk.group_by, tk.if_missing) if tk else None
    if not rules and topk is None:
        raise PolicyError(_where(source, "a policy needs at least one rule or a top_k"))
    return FilterPolicy(pm.name, tuple(rules), tuple(pm.edit_types), topk, pm.description or "",
                        pm.task)


def _where(src: str, ctx: str) -> str:
    return f"{src}: {ctx}" if src else ctx


def load_policy(path_or_name: Union[str, Path]) -> FilterPolicy:
    """A policy from a YAML file, or by name from `datasets_spec/filters/<name>.yaml`."""
    from nexus_gen.spec_files import load_spec_yaml

    data, p = load_spec_yaml(path_or_name, FILTERS_DIR, "filter policy file", PolicyError)
    return policy_from_dict(data, str(p))


def policy_for_edit_type(edit_type: str) -> FilterPolicy:
    """The built-in policy whose `edit_types` lists `edit_type`, else the `default` policy."""
    for p in sorted(FILTERS_DIR.glob("*.yaml")):
        pol = load_policy(p)
        if edit_type in pol.edit_types:
            return pol
    return load_policy("default")


def _missing(values: pd.Series) -> np.ndarray:
    """Bool mask of null cells (None, NaN, pd.NA)."""
    return np.array(pd.isna(values), dtype=bool)


def _passes(values: pd.Series, op: str, value: Any) -> np.ndarray:
    """Bool mask of cells where `cell op value` holds; a null cell never passes."""
    fn = OPS[op]
    miss = _missing(values)
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        if miss[i]:
            continue
        try:
            out[i] = bool(fn(v, value))
        except TypeError:
            out[i] = False
    return out


def _why(column: str, what: str) -> str:
    hint = COLUMN_SOURCES.get(column)
    return f"{what} ({hint})" if hint else what


def select(table, policy: Union[FilterPolicy, str, Path]):
    """Apply `policy` to a scored table (pandas DataFrame or pyarrow Table) without recomputing.

    Returns `(kept_table, SelectionReport)`; the kept table has the input's type and row order.
    Works on `nexus-gen score` output and on a build's triplet table alike: rules whose column
    is absent or null follow their `if_missing` (see the module doc)."""
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
    scope = np.ones(n, dtype=bool)
    if pol.task and "task" in cols:
        scope = (df["task"].astype(object) == pol.task).to_numpy(dtype=bool)
    n_scope = int(scope.sum())
    keep = scope.copy()  # judged rows still kept; rows out of scope are added back at the end
    report = SelectionReport(pol.name, n, 0, rows_other_task=n - n_scope)
    for r in pol.rules:
        if r.column not in cols:
            report.rules.append(RuleReport(r.name, r.column, 0, 0, skipped=True, not_judged=n_scope,
                                           note=_why(r.column, f"the table has no column {r.column!r}")))
            continue
        miss = _missing(df[r.column])
        ok = _passes(df[r.column], r.op, r.value)
        not_judged = 0
        if r.if_missing == "skip":
            ok |= miss
            not_judged = int((miss & scope).sum())
        rep = RuleReport(r.name, r.column, int((keep & ~ok).sum()), int((scope & ~ok).sum()),
                         not_judged=not_judged)
        if n_scope and not_judged == n_scope:
            rep.skipped = True
            rep.note = _why(r.column, f"{r.column!r} is null in every row")
        report.rules.append(rep)
        keep &= ok
    if pol.top_k is not None:
        keep = _top_k(df, pol.top_k, keep, cols, report)
    keep |= ~scope
    report.rows_out = int(keep.sum())
    for r in report.rules:
        if r.skipped and n_scope:
            report.warnings.append(f"policy {pol.name!r}: rule {r.name!r} judged no row: {r.note}")
    if report.removed_all:
        worst = max(report.rules, key=lambda r: r.removed, default=None)
        report.warnings.append(
            f"policy {pol.name!r} removed every row ({n_scope} of {n_scope})"
            + (f"; most by rule {worst.name!r} ({worst.removed})" if worst and worst.removed else "")
            + ": check the thresholds against the scores")
    for w in report.warnings:
        log.warning("%s", w)
    log.info("policy %s kept %d of %d rows", pol.name, report.rows_out, n)
    kept = table.filter(pa.array(keep)) if is_arrow else df[keep]
    return kept, report


def _top_k(df: pd.DataFrame, tk: TopK, keep: np.ndarray, cols: set, report: SelectionReport) -> np.ndarray:
    """`keep` narrowed to the best `tk.k` per group; rows with a null score or group key follow
    `tk.if_missing` (skip: kept, unranked; error: removed)."""
    name = f"top_{tk.k}"
    cand = np.flatnonzero(keep)
    absent = [c for c in (tk.column, tk.group_by) if c and c not in cols]
    if absent:
        report.rules.append(RuleReport(name, tk.column, 0, 0, skipped=True, not_judged=len(cand),
                                       note=_why(absent[0], f"the table has no column {absent[0]!r}")))
        return keep
    score = pd.to_numeric(df[tk.column].iloc[cand], errors="coerce")
    miss = np.array(score.isna(), dtype=bool)
    if tk.group_by:
        miss |= _missing(df[tk.group_by].iloc[cand])
    ranked = cand[~miss]
    order = pd.DataFrame({"s": score.to_numpy()[~miss], "pos": ranked,
                          "g": df[tk.group_by].iloc[ranked].to_numpy() if tk.group_by else 0})
    order = order.sort_values(["s", "pos"], ascending=[False, True], kind="stable")
    chosen = order.groupby("g", sort=False).head(tk.k)["pos"].to_numpy()
    new_keep = np.zeros(len(keep), dtype=bool)
    new_keep[chosen] = True
    not_judged = 0
    if tk.if_missing == "skip":
        new_keep[cand[miss]] = True
        not_judged = int(miss.sum())
    rep = RuleReport(name, tk.column, int(keep.sum() - new_keep.sum()), 0, not_judged=not_judged)
    if len(cand) and not_judged == len(cand):
        rep.skipped = True
        rep.note = _why(tk.column, f"{tk.column!r} or {tk.group_by!r} is null in every row kept so far")
    report.rules.append(rep)
    return new_keep
