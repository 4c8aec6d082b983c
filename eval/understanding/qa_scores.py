"""Scorers: MME, POPE, MMBench CircularEval, plain multiple choice, and the scenes QA.

Each takes `Scored` rows (an item's truth plus the parsed answer) and returns plain dicts. An
unparsed answer (`extracted` None, `reason` set) is wrong and stays in every denominator.

- MME (the rule both VLMEvalKit and lmms-eval apply): per subtask, acc = share of right answers
  and acc+ = share of images (pairs) with both answers right, both in %, score = acc + acc+ (max
  200); perception = sum of its 10 subtasks (max 2000), cognition of its 4 (max 800).
- POPE per split and overall: accuracy (right / all), precision TP/(TP+FP), recall TP/(TP+FN),
  F1, yes-ratio. Conventions follow the parser: lmms-eval counts a false negative only for an
  exact 'no' and reports the share of ground-truth yes as yes-ratio; VLMEvalKit counts every
  answer that is not 'yes' as a predicted no and splits a comma-separated category into several
  splits (a row counts in each, overall too).
- CircularEval: rows share the group `int(index % 1e6)`; a group is scored from its main row
  (index == group) and counts only if every rotation was extracted and right (VLMEvalKit's
  exact-matching `mcq_circular_eval`); rows of a group without a main row are not scored, and
  counted."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")


@dataclass
class Scored:
    """One item's truth and parsed answer. `reason` says why nothing was extracted (or why the
    item could not be run)."""

    id: str
    answer: str
    extracted: Optional[str]
    reason: str = ""
    kind: str = "mc"
    category: str = ""
    group: str = ""
    split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.extracted is not None and self.extracted == self.answer


def _pct(num: float, den: int) -> Optional[float]:
    return 100.0 * num / den if den else None


def accuracy(rows: list[Scored]) -> dict[str, Any]:
    """Accuracy in % with its denominator and the unparsed count."""
    n = len(rows)
    return {"accuracy": _pct(sum(r.correct for r in rows), n), "n": n,
            "unparsed": sum(r.extracted is None for r in rows)}


def reasons(rows: list[Scored]) -> dict[str, int]:
    """How many rows were not extracted, by reason (sorted by count, then text)."""
    c = Counter(r.reason for r in rows if r.extracted is None)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def score_mme(rows: list[Scored]) -> dict[str, Any]:
    """MME: per subtask acc, acc+ and score; perception and cognition totals (see module doc).
    Images with other than 2 questions are still scored (acc+ = all of them right) and listed."""
    by_cat: dict[str, dict[str, list[Scored]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_cat[r.category][r.group].append(r)
    subtasks = {}
    for cat in sorted(by_cat):
        groups = by_cat[cat]
        qs = [r for g in groups.values() for r in g]
        acc = _pct(sum(r.correct for r in qs), len(qs))
        acc_plus = _pct(sum(all(r.correct for r in g) for g in groups.values()), len(groups))
        subtasks[cat] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                         "questions": len(qs), "images": len(groups),
                         "unpaired_images": sum(len(g) != 2 for g in groups.values())}
    out: dict[str, Any] = {"subtasks": subtasks}
    for name, cats in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [c for c in cats if c in subtasks]
        out[name] = sum(subtasks[c]["score"] for c in present) if present else None
        out[f"{name}_max"] = 200 * len(cats)
        out[f"{name}_missing_subtasks"] = [c for c in cats if c not in subtasks]
    out["other_subtasks"] = [c for c in subtasks if c not in MME_PERCEPTION + MME_COGNITION]
    out["unpaired_images"] = sum(s["unpaired_images"] for s in subtasks.values())
    return out


def pope_metrics(rows: list[Scored], unknown_is_no: bool, yes_ratio: str) -> dict[str, Any]:
    """POPE metrics of one split (fractions in [0, 1], as both frameworks compute them)."""
    tp = sum(r.answer == "yes" and r.extracted == "yes" for r in rows)
    fp = sum(r.answer == "no" and r.extracted == "yes" for r in rows)
    if unknown_is_no:
        fn = sum(r.answer == "yes" and r.extracted != "yes" for r in rows)
    else:
        fn = sum(r.answer == "yes" and r.extracted == "no" for r in rows)
    tn = sum(r.answer == "no" and r.extracted == "no" for r in rows)
    n = len(rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if yes_ratio == "ground-truth":
        yr = sum(r.answer == "yes" for r in rows) / n if n else 0.0
    else:
        yr = sum(r.extracted == "yes" for r in rows) / n if n else 0.0
    return {"accuracy": sum(r.correct for r in rows) / n if n else 0.0, "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": yr, "n": n, "tp": tp, "fp": fp, "fn": fn,
            "tn": tn, "unparsed": sum(r.extracted is None for r in rows)}


def score_pope(rows: list[Scored], unknown_is_no: bool = True, yes_ratio: str = "predicted",
               split_on_comma: bool = False) -> dict[str, Any]:
    """POPE per split and overall; `yes_ratio_definition` and the conventions are recorded."""
    exploded: list[tuple[str, Scored]] = []
    for r in rows:
        splits = r.split.split(",") if split_on_comma else [r.split]
        exploded += [(s, r) for s in splits]
    by_split: dict[str, list[Scored]] = defaultdict(list)
    for s, r in exploded:
        by_split[s].append(r)
    overall_rows = [r for _, r in exploded] if split_on_comma else rows
    splits = {s: pope_metrics(by_split[s], unknown_is_no, yes_ratio) for s in sorted(by_split)}
    named = [s for s in splits if s]
    return {"splits": splits,
            "overall": pope_metrics(overall_rows, unknown_is_no, yes_ratio),
            "mean_f1": sum(splits[s]["f1"] for s in named) / len(named) if named else None,
            "mean_accuracy": sum(splits[s]["accuracy"] for s in named) / len(named) if named else None,
            "yes_ratio_definition": ("share of ground-truth yes" if yes_ratio == "ground-truth"
                                     else "share of answers parsed as yes"),
            "unknown_counts_as_no": unknown_is_no}


def score_circular(rows: list[Scored]) -> dict[str, Any]:
    """CircularEval (see module doc), with the plain per-row accuracy beside it."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for r in rows:
        groups[r.group].append(r)
    hits: dict[str, bool] = {}
    orphans = 0
    for g, rs in groups.items():
        if not any(r.id == g for r in rs):
            orphans += len(rs)
            continue
        hits[g] = all(r.correct for r in rs)
    by_cat: dict[str, list[bool]] = defaultdict(list)
    main = {r.id: r for r in rows}
    for g, hit in hits.items():
        by_cat[main[g].category].append(hit)
    return {"circular_accuracy": _pct(sum(hits.values()), len(hits)), "groups": len(hits),
            "rotations": Counter(len(groups[g]) for g in hits),
            "rows_without_main_row": orphans,
            "per_category": {c: _pct(sum(v), len(v)) for c, v in sorted(by_cat.items())},
            "vanilla": accuracy(rows)}


def score_mc(rows: list[Scored]) -> dict[str, Any]:
    """Multiple-choice accuracy overall and per category (and l2-category when present)."""
    by_cat: dict[str, list[Scored]] = defaultdict(list)
    by_l2: dict[str, list[Scored]] = defaultdict(list)
    for r in rows:
        by_cat[r.category].append(r)
        if r.meta.get("l2-category"):
            by_l2[r.meta["l2-category"]].append(r)
    out = accuracy(rows)
    out["per_category"] = {c: accuracy(v) for c, v in sorted(by_cat.items())}
    if by_l2:
        out["per_l2_category"] = {c: accuracy(v) for c, v in sorted(by_l2.items())}
    return out


def score_scenes(rows: list[Scored], unknown_is_no: bool = True,
                 yes_ratio: str = "predicted") -> dict[str, Any]:
    """The scenes QA: accuracy overall, per question kind x format, POPE on presence yes / no."""
    by: dict[str, list[Scored]] = defaultdict(list)
    for r in rows:
        by[f"{r.category}/{r.kind}"].append(r)
    presence = [r for r in rows if r.category == "presence" and r.kind == "yesno"]
    return {**accuracy(rows), "per_kind": {k: accuracy(v) for k, v in sorted(by.items())},
            "mc": accuracy([r for r in rows if r.kind == "mc"]),
            "yesno": accuracy([r for r in rows if r.kind == "yesno"]),
            "pope": score_pope(presence, unknown_is_no, yes_ratio) if presence else None}
