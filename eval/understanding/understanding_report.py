"""The understanding section of the benchmark report: headline numbers beside the published
ones, the parser that made them, the denominator, a 'not comparable' warning when the run is a
subset or the model is the tiny one, per-subtask / split / category tables and the unparsed
answers by reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.report import Report, Section, Table, bar_chart, Figure

# Published numbers (../shared/NEXUS_GEN.md): (model, metric, value, our task, our headline key).
REFERENCES: list[tuple[str, str, float, str, str]] = [
    ("Janus-Pro-7B", "MME-P", 1567.1, "mme", "mme_perception"),
    ("Janus-Pro-7B", "MMBench", 79.2, "mmbench", "mmbench_circular"),
    ("Janus-Pro-7B", "SEED", 72.1, "mc", "accuracy"),
    ("Janus-Pro-7B", "MMMU", 41.0, "mc", "accuracy"),
    ("Nexus-Gen V2", "MMMU", 45.7, "mc", "accuracy"),
    ("Janus-Pro-7B", "POPE", 87.4, "pope", "pope_f1"),
]


def _num(v: Any) -> Any:
    return round(v, 2) if isinstance(v, float) else v


def _detail_tables(task: str, scores: dict[str, Any]) -> tuple[list[Table], list[Figure]]:
    tables, figures = [], []
    if task == "mme":
        sub = scores["subtasks"]
        tables.append(Table(["subtask", "questions", "images", "acc", "acc+", "score"],
                            [[c, s["questions"], s["images"], _num(s["acc"]), _num(s["acc_plus"]),
                              _num(s["score"])] for c, s in sub.items()],
                            title="MME subtasks", note="score = acc + acc+ (max 200 per subtask)"))
        if sub:
            figures.append(Figure("mme_subtasks", bar_chart(list(sub), {"score": [s["score"] for s in sub.values()]},
                                  "MME score per subtask", ylabel="score", ylim=(0.0, 200.0))))
    elif task in ("pope", "scenes") and (scores if task == "pope" else scores.get("pope")):
        pope = scores if task == "pope" else scores["pope"]
        rows = [[s or "(none)", m["n"], _num(100 * m["accuracy"]), _num(100 * m["precision"]),
                 _num(100 * m["recall"]), _num(100 * m["f1"]), _num(100 * m["yes_ratio"]), m["unparsed"]]
                for s, m in list(pope["splits"].items()) + [("overall", pope["overall"])]]
        tables.append(Table(["split", "n", "accuracy %", "precision %", "recall %", "F1 %",
                             "yes-ratio %", "unparsed"], rows, title="POPE" if task == "pope" else
                            "Presence (POPE-style)", note=f"yes-ratio: {pope['yes_ratio_definition']}; "
                            f"unparsed answers count as 'no': {pope['unknown_counts_as_no']}"))
    if task == "mmbench":
        tables.append(Table(["category", "circular accuracy %"],
                            [[c, _num(v)] for c, v in scores["per_category"].items()],
                            title="CircularEval per category",
                            note=f"{scores['groups']} questions (groups); rotations per group: "
                                 f"{dict(scores['rotations'])}; rows of groups without a main row "
                                 f"(not scored, as VLMEvalKit): {scores['rows_without_main_row']}"))
    if task == "mc":
        tables.append(Table(["category", "n", "accuracy %", "unparsed"],
                            [[c, v["n"], _num(v["accuracy"]), v["unparsed"]]
                             for c, v in scores["per_category"].items()], title="Per category"))
    if task == "scenes":
        kinds = scores["per_kind"]
        tables.append(Table(["kind / format", "n", "accuracy %", "unparsed"],
                            [[k, v["n"], _num(v["accuracy"]), v["unparsed"]] for k, v in kinds.items()],
                            title="Scenes QA per question kind"))
        if kinds:
            figures.append(Figure("scenes_kinds", bar_chart(list(kinds), {
                "accuracy": [(v["accuracy"] or 0.0) / 100 for v in kinds.values()]},
                "Scenes QA accuracy per kind")))
    return tables, figures


def build_understanding_report(run_dir: Path) -> Report:
    """The Report of an understanding run (or re-scoring) directory, from its scores.json."""
    run_dir = Path(run_dir)
    path = run_dir / "scores.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: score the run first")
    res = json.loads(path.read_text(encoding="utf-8"))
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    task, d, parser = res["task"], res["denominator"], res["parser"]
    text = [f"Task `{task}`, model `{res['model']}`, data `{config.get('data', '')}`.",
            f"Answers parsed by **{parser['name']}** (version {parser['version']}): every number "
            f"below was made by this parser.",
            f"Denominator: {d['items']} items (of {d['items_in_data']} in the data); "
            f"{d['not_run']} not run, {d['missing_predictions']} without a prediction and "
            f"{d['unparsed']} unparsed in all, each scored wrong and counted below."]
    if res["not_comparable"]:
        text.append("**Not comparable with the published numbers:** " + "; ".join(res["not_comparable"]) + ".")
    else:
        text.append("Comparable with the published numbers only if the data is the full official set "
                    "and the parser is the one the reference used.")
    head = Table(["metric", "value"], [[k, _num(v)] for k, v in res["headline"].items()], title="Headline")
    refs = [[m, metric, value, _num(res["headline"].get(key))] for m, metric, value, t, key in REFERENCES
            if t == task]
    tables = [head]
    if refs:
        tables.append(Table(["reference model", "metric", "published", "this run"], refs,
                            title="Published reference numbers",
                            note="POPE reference: the metric averaged over splits is assumed to be F1 "
                                 "(unverified); MMBench: CircularEval accuracy."))
    detail, figures = _detail_tables(task, res["scores"])
    why = res["unparsed_reasons"]
    sections = [Section("Understanding: " + task, text=text, tables=tables),
                Section("Details", tables=detail, figures=figures)]
    sections.append(Section("Unparsed answers by reason", tables=[Table(
        ["reason", "items"], [[k, v] for k, v in why.items()] or [["(none)", 0]])]))
    sections.append(Section("Config", code=json.dumps(config, indent=2, sort_keys=True)))
    return Report(f"Understanding benchmark: {task}", sections)
