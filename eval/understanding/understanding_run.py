"""Understanding benchmark runs: check -> prepare -> predict (resumable) -> score -> report.

A run directory holds `config.json` (benchmark, data, model, parser, limit: no timestamps),
`items.jsonl` (every selected item without images: what re-scoring needs), `predictions.jsonl`
(`{"id", "prediction", "model", "prompt"}`, appended batch by batch: an interrupted run resumes
where it stopped and never recomputes a finished item), `parsed.jsonl` (each item's parsed
answer, right or wrong, and why nothing was parsed), `scores.json`, `summary.json` and the
report. `rescore` re-scores a predictions file with any parser, without a model."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from eval.understanding.benchmark_items import BENCHMARKS, Item, TableError, load_items, read_items, select, write_items
from eval.understanding.answer_parsers import DEFAULT_PARSER, AnswerParser, get_parser
from eval.understanding.predictions import Prediction, prediction_problem, read_predictions
from eval.understanding.qa_scores import (Scored, reasons, score_circular, score_mc, score_mme,
                                        score_pope, score_scenes)
from nexus_gen.data.shards import write_json_atomic

log = logging.getLogger(__name__)

CONFIG_FILE, ITEMS_FILE, PRED_FILE = "config.json", "items.jsonl", "predictions.jsonl"
PARSED_FILE, SCORES_FILE, SUMMARY_FILE = "parsed.jsonl", "scores.json", "summary.json"
BENCHMARK_NAME = "understanding"  # config.json "benchmark": the report builder's key
_SAME_RUN = ("task", "data", "model", "limit", "max_new_tokens")


@dataclass
class UnderstandingConfig:
    task: str  # scenes | mme | pope | mmbench | mc
    data: str
    model: str
    out: Path
    parser: str = DEFAULT_PARSER
    limit: Optional[int] = None
    batch_size: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = 16

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["benchmark"] = BENCHMARK_NAME
        for k in ("out", "batch_size", "device"):  # where / how fast, not what: not recorded
            d.pop(k)
        return d


@dataclass
class Plan:
    config: UnderstandingConfig
    items: list[Item]
    parser: AnswerParser
    total_items: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def check(config: UnderstandingConfig) -> Plan:
    """Validate every option and read the data before any work; ValueError / FileNotFoundError
    with one clear line otherwise. A run directory of another run is refused."""
    c = config
    if c.task not in BENCHMARKS:
        raise ValueError(f"--benchmark {c.task!r}: expected one of {', '.join(BENCHMARKS)}")
    parser = get_parser(c.parser)
    for name, v in (("--batch-size", c.batch_size), ("--max-new-tokens", c.max_new_tokens)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if c.limit is not None and c.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {c.limit}")
    from nexus_gen.models.nexus_pipeline import check_nexus_source, nexus_source

    if nexus_source(c.model) is not None:
        check_nexus_source(nexus_source(c.model), "--model")
    elif c.model != "tiny":
        from eval.geneval.run import _check_hub_source

        _check_hub_source(c.model, "--model", "config.json")
    out = Path(c.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    stored = out / CONFIG_FILE
    if stored.is_file():
        try:
            old = json.loads(stored.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{stored}: not valid JSON ({e.msg}); use another --out") from None
        new = c.record()
        diff = [k for k in _SAME_RUN if old.get(k) != new.get(k)]
        if old.get("benchmark") != BENCHMARK_NAME or diff:
            raise ValueError(f"--out {out} holds another run (differs in {', '.join(diff) or 'benchmark'}): "
                             f"use another --out, or the same options to resume it")
    try:
        items = load_items(c.task, c.data)
    except TableError as e:
        raise ValueError(str(e)) from None
    chosen = select(items, c.limit)
    plan = Plan(c, chosen, parser, total_items=len(items))
    if (out / PRED_FILE).is_file():  # a resumed run: its predictions must be readable now
        read_predictions(out / PRED_FILE, [i.id for i in chosen], skip_unfinished_line=True)
    return plan


def prepare(plan: Plan) -> Plan:
    """Create the run directory, write config.json and items.jsonl."""
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.out / CONFIG_FILE, {**plan.config.record(), "total_items": plan.total_items},
                      sort_keys=True)
    write_items(plan.items, plan.out / ITEMS_FILE)
    return plan


def _drop_partial_line(path: Path) -> None:
    """An interrupted write can leave a last line without its newline: drop it (that item is
    simply predicted again)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        log.warning("%s: dropping an unfinished last line (interrupted run)", path)
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def predict_step(plan: Plan, model: Any = None, progress: bool = True) -> dict[str, int]:
    """Answer every item that has no prediction yet, appending to predictions.jsonl batch by
    batch. Items that cannot be run (their `error`) are not sent to the model. A batch that
    fails is retried item by item; an item that still fails is saved with its error."""
    path = plan.out / PRED_FILE
    _drop_partial_line(path)
    done = read_predictions(path, [i.id for i in plan.items]) if path.is_file() else {}
    todo = [i for i in plan.items if not i.error and i.id not in done]
    counts = {"kept": len(done), "predicted": 0, "failed": 0,
              "not_run": sum(1 for i in plan.items if i.error)}
    if not todo:
        return counts
    if model is None:
        from eval.understanding.vlm_adapter import load_model

        model = load_model(plan.config.model, plan.config.device, plan.config.dtype,
                           plan.config.max_new_tokens)
    from tqdm.auto import tqdm

    bs = plan.config.batch_size
    bar = tqdm(total=len(todo), desc=f"understanding {plan.config.task} ({plan.config.model})",
               unit="q", disable=None if progress else True)
    with open(path, "a", encoding="utf-8") as f:
        for k in range(0, len(todo), bs):
            batch = todo[k:k + bs]
            try:
                answers: list[Any] = list(model.answer(batch))
                errors = [""] * len(batch)
            except Exception as e:  # one bad item must not stop the run: retry one by one
                log.warning("batch failed (%s): retrying its %d items one by one", e, len(batch))
                answers, errors = [], []
                for it in batch:
                    try:
                        answers.append(model.answer([it])[0])
                        errors.append("")
                    except Exception as e1:
                        answers.append(None)
                        errors.append(f"model error: {type(e1).__name__}: {e1}"[:300])
            for it, a, err in zip(batch, answers, errors):
                rec = json.loads(Prediction(it.id, a, plan.config.model, it.prompt).line())
                if err:
                    rec["error"] = err
                    counts["failed"] += 1
                else:
                    counts["predicted"] += 1
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    return counts


# -- scoring
def parse_items(items: list[Item], preds: dict[str, Prediction], parser: AnswerParser,
                errors: Optional[dict[str, str]] = None) -> list[Scored]:
    """Each item's parsed answer; items not run, without a prediction, or whose prediction is
    not a non-empty string are unparsed with that reason (and stay in the denominator)."""
    errors = errors or {}
    rows = []
    for it in items:
        base = dict(id=it.id, answer=it.answer, kind=it.kind, category=it.category, group=it.group,
                    split=it.split, meta=it.meta)
        p = preds.get(it.id)
        if it.error:
            rows.append(Scored(extracted=None, reason=f"not run: {it.error}", **base))
        elif p is None:
            rows.append(Scored(extracted=None, reason="missing prediction", **base))
        elif errors.get(it.id):
            rows.append(Scored(extracted=None, reason=errors[it.id].split(":")[0], **base))
        elif prediction_problem(p.prediction):
            rows.append(Scored(extracted=None, reason=prediction_problem(p.prediction), **base))
        else:
            parsed = (parser.yesno(p.prediction, it.yesno_style) if it.kind == "yesno"
                      else parser.choice(p.prediction, it.choices, it.id))
            rows.append(Scored(extracted=parsed.value, reason=parsed.reason if parsed.value is None
                               else "", **base))
    return rows


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(100.0 * x, 4)


def score_rows(task: str, rows: list[Scored], parser: AnswerParser) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the benchmark's scores, its headline numbers)."""
    pope = dict(unknown_is_no=parser.pope_unknown_is_no, yes_ratio=parser.pope_yes_ratio)
    if task == "mme":
        s = score_mme(rows)
        return s, {"mme_perception": s["perception"], "mme_cognition": s["cognition"]}
    if task == "pope":
        s = score_pope(rows, split_on_comma=parser.pope_split_on_comma, **pope)
        named = s["mean_f1"] is not None
        return s, {"pope_f1": _pct(s["mean_f1"] if named else s["overall"]["f1"]),
                   "pope_accuracy": _pct(s["mean_accuracy"] if named else s["overall"]["accuracy"]),
                   "pope_yes_ratio": _pct(s["overall"]["yes_ratio"])}
    if task == "mmbench":
        s = score_circular(rows)
        return s, {"mmbench_circular": s["circular_accuracy"], "mmbench_vanilla": s["vanilla"]["accuracy"]}
    if task == "mc":
        s = score_mc(rows)
        return s, {"accuracy": s["accuracy"]}
    s = score_scenes(rows, **pope)
    return s, {"accuracy": s["accuracy"], "mc_accuracy": s["mc"]["accuracy"],
               "yesno_accuracy": s["yesno"]["accuracy"],
               "pope_f1": _pct(s["pope"]["overall"]["f1"]) if s["pope"] else None}


def denominator(rows: list[Scored], total_items: int) -> dict[str, int]:
    """What the numbers are over: every selected item, with how many could not count as right."""
    return {"items": len(rows), "items_in_data": total_items,
            "not_run": sum(r.reason.startswith("not run") for r in rows),
            "missing_predictions": sum(r.reason == "missing prediction" for r in rows),
            "unparsed": sum(r.extracted is None for r in rows)}


def comparability(task: str, model: str, limit: Optional[int], denom: dict[str, int],
                  scores: dict[str, Any]) -> list[str]:
    """Why this run's numbers cannot be set beside the published ones (empty: nothing known)."""
    why = []
    if task == "scenes":
        why.append("the scenes QA is our offline benchmark: no published number exists")
    if model in ("tiny", "nexus-gen:tiny"):
        why.append("the tiny model is random-init: its numbers only test the pipeline")
    if limit is not None or denom["items"] < denom["items_in_data"]:
        why.append(f"a subset ({denom['items']} of {denom['items_in_data']} items)")
    if denom["not_run"] or denom["missing_predictions"]:
        why.append(f"{denom['not_run']} items not run and {denom['missing_predictions']} without "
                   f"a prediction (scored wrong)")
    if task == "mme" and (scores.get("perception_missing_subtasks") or scores.get("cognition_missing_subtasks")):
        miss = scores["perception_missing_subtasks"] + scores["cognition_missing_subtasks"]
        why.append(f"MME subtasks missing: {', '.join(miss)}")
    return why


def evaluate(task: str, items: list[Item], preds: dict[str, Prediction], parser: AnswerParser,
             model: str, limit: Optional[int], total_items: int,
             errors: Optional[dict[str, str]] = None) -> tuple[dict[str, Any], list[Scored]]:
    """Parse and score; the summary (headline, parser, denominator, comparability)."""
    rows = parse_items(items, preds, parser, errors)
    scores, headline = score_rows(task, rows, parser)
    denom = denominator(rows, total_items)
    summary = {"benchmark": BENCHMARK_NAME, "task": task, "model": model,
               "parser": parser.describe(), "headline": headline, "denominator": denom,
               "unparsed_reasons": reasons(rows),
               "not_comparable": comparability(task, model, limit, denom, scores)}
    return {**summary, "scores": scores}, rows


def _write_results(out: Path, result: dict[str, Any], rows: list[Scored]) -> dict[str, Any]:
    with open(out / (PARSED_FILE + ".tmp"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r.id, "answer": r.answer, "extracted": r.extracted,
                                "correct": r.correct, "reason": r.reason}, ensure_ascii=False) + "\n")
    (out / (PARSED_FILE + ".tmp")).replace(out / PARSED_FILE)
    write_json_atomic(out / SCORES_FILE, result, sort_keys=True)
    summary = {k: v for k, v in result.items() if k != "scores"}
    write_json_atomic(out / SUMMARY_FILE, summary, sort_keys=True)
    return summary


def _errors(path: Path) -> dict[str, str]:
    """Model errors saved beside predictions (`error` key), by id."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            if d.get("error"):
                out[str(d["id"])] = str(d["error"])
    return out


def score_step(plan: Plan) -> dict[str, Any]:
    """Score the run's predictions; write parsed.jsonl, scores.json, summary.json."""
    path = plan.out / PRED_FILE
    preds = read_predictions(path, [i.id for i in plan.items]) if path.is_file() else {}
    result, rows = evaluate(plan.config.task, plan.items, preds, plan.parser, plan.config.model,
                            plan.config.limit, plan.total_items, _errors(path) if path.is_file() else {})
    return _write_results(plan.out, result, rows)


def report_step(out: Path) -> tuple[Path, Path]:
    from eval.report import write_report
    from eval.understanding.understanding_report import build_understanding_report

    return write_report(build_understanding_report(out), out)


def rescore(pred_path: Path, parser_name: str, out: Path,
            items_path: Optional[Path] = None) -> dict[str, Any]:
    """Re-score saved predictions with another parser, without a model. The items (answers,
    options, groups) come from `items_path`, else the items.jsonl beside the predictions; the
    run's config.json there gives the benchmark. Writes config.json, scores and the report."""
    parser = get_parser(parser_name)
    pred_path = Path(pred_path)
    if not pred_path.is_file():
        raise FileNotFoundError(f"predictions file {pred_path} does not exist")
    items_path = Path(items_path) if items_path else pred_path.parent / ITEMS_FILE
    config_path = items_path.parent / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: re-scoring needs the run directory "
                                f"the predictions came from (its config.json and items.jsonl)")
    run = json.loads(config_path.read_text(encoding="utf-8"))
    items = read_items(items_path)
    preds = read_predictions(pred_path, [i.id for i in items])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    record = {**run, "parser": parser.name, "rescored_from": str(pred_path)}
    write_json_atomic(out / CONFIG_FILE, record, sort_keys=True)
    if out.resolve() != items_path.parent.resolve():
        write_items(items, out / ITEMS_FILE)
    result, rows = evaluate(run["task"], items, preds, parser, run.get("model", ""),
                            run.get("limit"), run.get("total_items", len(items)), _errors(pred_path))
    summary = _write_results(out, result, rows)
    report_step(out)
    return summary
