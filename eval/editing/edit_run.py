"""One editing-benchmark run as plain functions: check (before any work), prepare, edit, score,
judge, summarise. The Prefect flow (`flows/evaluate_editing.py`) wraps these steps as tasks.

A run directory holds `config.json`, `items.jsonl` (what was planned) and `skipped.jsonl` (rows
left out, with their reason), the edited images (`edited/<id>.png`; GEdit-Bench items in its
official `{model}/fullset/{task_type}/{lang}/{key}.png` layout, the source beside each as
`{key}_SRCIMG.png`), `scores.jsonl`, optionally `judgments.jsonl` and `judge_cache.jsonl`,
`gallery.png`, `summary.json`, `report.md` and `report.html`.

Resumable: an edited image that exists is kept (never re-edited), and a score row is reused while
its edited image's hash and the scoring models are unchanged, so re-scoring needs no editor.

Metrics (MagicBrush): against the ground-truth target, L1 and L2 (MSE) on [0, 1] pixels with the
edited image resized (bicubic) to the target's size, CLIP-I and DINO cosines, CLIP-T of the edited
image and the target caption; directional CLIP against the caption change (InstructPix2Pix /
Emu Edit); against the source (Emu Edit, also where there is no target) `clip_i_source`,
`dino_source`, `l1_source`. On scenes edits also exact success: the pixel detector finds the
added object inside the mask (add) / no longer finds the removed one (remove), and every other
object of the ground-truth target is found again (so a blurred output is no removal); and L1
inside and outside the exact mask."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from eval.editing.edit_items import BenchmarkError, EditItem, Loaded
from eval.editing.editors import EditorSpec, build_editor, item_seed
from nexus_gen.data.shards import write_json_atomic

log = logging.getLogger(__name__)

BENCHMARK = "editing"
CONFIG_FILE, SUMMARY_FILE, SCORES_FILE = "config.json", "summary.json", "scores.jsonl"
ITEMS_FILE, SKIPPED_FILE = "items.jsonl", "skipped.jsonl"
JUDGMENTS_FILE, JUDGE_CACHE_FILE, GALLERY_FILE = "judgments.jsonl", "judge_cache.jsonl", "gallery.png"
METRICS: tuple[str, ...] = ("l1", "l2", "clip_i", "dino", "clip_t", "clip_dir", "clip_i_source",
                            "dino_source", "l1_source", "l1_inside", "l1_outside")
HEADLINE: tuple[str, ...] = ("l1", "l2", "clip_i", "dino", "clip_t", "clip_dir")
# config keys that change the edited images: a run directory refuses a rerun that changes them
# (`--limit` may change: items are taken in a fixed order, so a longer run extends a shorter one)
EDIT_KEYS = ("data", "fmt", "editor", "seed", "size", "language", "steps", "guidance",
             "image_guidance", "dtype")
GALLERY_ITEMS = 6


@dataclass
class EditingConfig:
    """Everything an editing run depends on (see `nexus-gen eval editing --help`)."""

    data: str
    editor: str
    out: Path
    fmt: str = "auto"
    limit: Optional[int] = None
    seed: int = 0
    size: int = 256  # scenes edits' image size
    language: Optional[str] = None  # shards / build runs: en (default); GEdit: en | cn | both
    images_root: Optional[Path] = None  # ImgEdit originals (default: basic_edit.json's folder)
    device: str = "cpu"
    dtype: str = "float32"
    steps: Optional[int] = None
    guidance: Optional[float] = None
    image_guidance: Optional[float] = None
    clip: str = "paper"
    dino: str = "paper"
    judge: Optional[str] = None  # an http(s) URL, `env` ($NEXUS_GEN_JUDGE_URL) or hf:MODEL_ID
    judge_model: Optional[str] = None
    judge_protocol: str = "auto"  # gedit | imgedit | both | auto (the data's own, else gedit)
    imgedit_prompts: Optional[Path] = None
    concurrency: int = 4
    retries: int = 3
    benchmark: str = BENCHMARK

    def editor_spec(self) -> EditorSpec:
        return EditorSpec(self.editor, device=self.device, dtype=self.dtype, steps=self.steps,
                          guidance=self.guidance, image_guidance=self.image_guidance)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass
class Plan:
    """A checked config, the items it runs on (and those it skipped) and the judge protocols."""

    config: EditingConfig
    out: Path
    loaded: Loaded
    protocols: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[EditItem]:
        return self.loaded.items


def _protocols(config: EditingConfig, kind: str) -> tuple[str, ...]:
    if not config.judge:
        return ()
    p = config.judge_protocol
    if p == "auto":
        return ("imgedit",) if kind == "imgedit" else ("gedit",)
    if p == "both":
        return ("gedit", "imgedit")
    if p not in ("gedit", "imgedit"):
        raise ValueError(f"--judge-protocol {p!r}: expected auto, gedit, imgedit or both")
    return (p,)


def check(config: EditingConfig) -> Plan:
    """Check everything before any work: options, the editor name, the judge and its prompts,
    and the benchmark table itself (read here, so a missing column fails now)."""
    from eval.editing.edit_judge import load_prompts

    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {config.limit}")
    if config.size < 16:
        raise ValueError(f"--size must be >= 16 pixels, got {config.size}")
    if config.concurrency < 1 or config.retries < 0:
        raise ValueError("--concurrency must be >= 1 and --retries >= 0")
    spec = config.editor_spec()
    spec.check()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a run directory")
    try:
        loaded = _load(config, spec.model_name)
    except (BenchmarkError, FileNotFoundError) as e:
        raise ValueError(str(e)) from e
    if not loaded.items:
        reasons = _reasons(loaded.skipped)
        raise ValueError(f"--data {config.data}: no usable edit items ({len(loaded.skipped)} "
                         f"skipped: {reasons or 'none found'}); check the table and --images-root")
    protocols = _protocols(config, loaded.kind)
    for p in protocols:
        load_prompts(p, config.imgedit_prompts)
    if config.judge and config.judge not in ("env",) and not config.judge.startswith(("hf:", "http://", "https://")):
        raise ValueError(f"--judge {config.judge!r}: pass an http(s) URL of an OpenAI-compatible "
                         "endpoint, `env` ($NEXUS_GEN_JUDGE_URL) or hf:MODEL_ID")
    return Plan(config, out, loaded, protocols)


def _load(config: EditingConfig, model_name: str) -> Loaded:
    from eval.editing.edit_sources import load_items

    language = config.language
    if language == "both":
        language = None
    return load_items(config.data, config.fmt, model=model_name, language=language,
                      images_root=config.images_root, limit=config.limit, size=config.size,
                      seed=config.seed)


def _reasons(skipped: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in skipped:
        out[s["reason"]] = out.get(s["reason"], 0) + 1
    return dict(sorted(out.items()))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a jsonl file this run wrote (empty if absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare(plan: Plan) -> Plan:
    """Create the run directory; write config.json, items.jsonl and skipped.jsonl. A directory
    holding a run whose edits differ (data, editor, seed, ...) is refused."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = plan.config.to_json()
    old_path = out / CONFIG_FILE
    if old_path.is_file():
        try:
            old = json.loads(old_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{old_path} is damaged ({e}); delete it or use another --out") from e
        changed = [k for k in EDIT_KEYS if old.get(k) != cfg.get(k)]
        if old.get("benchmark") != BENCHMARK or changed:
            raise ValueError(f"--out {out} holds another run (differs in: "
                             f"{', '.join(changed) or 'benchmark'}); use another --out")
    write_json_atomic(old_path, {**cfg, "data_kind": plan.loaded.kind,
                                 "judge_protocols": list(plan.protocols)}, sort_keys=True)
    _write_jsonl(out / ITEMS_FILE, [{"id": i.id, "edit_type": i.edit_type, "language": i.language,
                                     "instruction": i.instruction, "edited": i.edited_path,
                                     "has_target": i.target is not None} for i in plan.items])
    _write_jsonl(out / SKIPPED_FILE, plan.loaded.skipped)
    return plan


def _save_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def edit_step(plan: Plan) -> dict[str, Any]:
    """Make the missing edited images (existing ones are kept); the editor is loaded only when
    something is missing. An item the editor fails on is counted with its reason."""
    from tqdm import tqdm

    from nexus_gen.scoring.image_inputs import ImageLoadError, load_rgb

    editor = None
    counts: dict[str, Any] = {"edited": 0, "kept": 0, "failed": {}}
    for item in tqdm(plan.items, desc=f"edit ({plan.config.editor})", unit="edit", disable=None):
        path = plan.out / item.edited_path
        src_copy = item.extra.get("source_path")
        if path.is_file():
            counts["kept"] += 1
            continue
        try:
            source = load_rgb(item.source)
            if editor is None:
                editor = build_editor(plan.config.editor_spec())
            edited = editor.edit(source, item.instruction, item_seed(plan.config.seed, item.id))
        except ImageLoadError as e:
            reason = f"unreadable source: {e}"
        except (RuntimeError, ValueError) as e:
            if editor is None:
                raise  # the editor cannot be built: a config problem, not an item's
            reason = f"editor error: {type(e).__name__}: {e}"
        else:
            if src_copy:
                _save_png(source, plan.out / src_copy)
            _save_png(edited, path)
            counts["edited"] += 1
            continue
        log.warning("item %s not edited: %s", item.id, reason)
        counts["failed"][reason] = counts["failed"].get(reason, 0) + 1
    if editor is not None:
        plan.extra["editor_model_id"] = editor.model_id
    return counts


PRESERVE_MIN_SCORE = 0.3  # objects the target shows clearly must stay (found again at any score)


def _verdict(item: EditItem, edited) -> dict[str, Optional[bool]]:
    """Scenes add / remove, by the pixel detector (None: not checkable). `edit_done`: the added
    object is found inside the mask / the removed one is not; `preserved`: every object the detector
    finds in the ground-truth target outside the mask (score > PRESERVE_MIN_SCORE) is found again
    in the edit (same shape and colour, its box centre inside the target object's box, any score);
    `success` needs both, so an output blurred until nothing is detected is no removal."""
    obj = item.extra.get("object")
    none = {"success": None, "edit_done": None, "preserved": None}
    if obj is None or item.mask is None or item.edit_type not in ("add", "remove"):
        return none
    from nexus_gen.scenes.detect import detect, object_in_mask
    from nexus_gen.scoring.image_inputs import load_rgb
    from nexus_gen.scoring.pixels import mask_array

    mask = mask_array(item.mask, edited.size)
    found = object_in_mask(edited, obj["shape"], obj["color"], mask)
    done = found if item.edit_type == "add" else not found
    target = load_rgb(item.target) if item.target is not None else None
    if target is not None and target.size != edited.size:
        from PIL import Image

        target = target.resize(edited.size, Image.Resampling.NEAREST)
    kept = None if target is None else _kept(detect(target, min_score=PRESERVE_MIN_SCORE), detect(edited), mask)
    return {"success": bool(done and kept) if kept is not None else done, "edit_done": done, "preserved": kept}


def _centre(box: tuple[float, float, float, float]) -> tuple[int, int]:
    return int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)


def _kept(want: list, got: list, mask: Any) -> bool:
    """Is every `want` detection whose box centre lies outside `mask` matched in `got`?"""
    h, w = mask.shape
    for d in want:
        cx, cy = _centre(d.box)
        if 0 <= cy < h and 0 <= cx < w and mask[cy, cx]:
            continue
        if not any(g.label == d.label and g.color == d.color
                   and d.box[0] <= _centre(g.box)[0] <= d.box[2] and d.box[1] <= _centre(g.box)[1] <= d.box[3]
                   for g in got):
            return False
    return True


def score_step(plan: Plan) -> list[dict[str, Any]]:
    """Score every edited image (rows reused while the image and the scoring models are the same);
    writes scores.jsonl and the gallery; returns the rows in item order."""
    import hashlib

    from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet

    cfg = plan.config
    models = {"clip": cfg.clip, "dino": cfg.dino}
    old = {r["id"]: r for r in read_jsonl(plan.out / SCORES_FILE)}
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[EditItem, Path, str]] = []
    for item in plan.items:
        path = plan.out / item.edited_path
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        prev = old.get(item.id)
        if prev and prev.get("edited_sha256") == digest and prev.get("models") == models:
            rows[item.id] = prev
        else:
            todo.append((item, path, digest))
    if todo:
        from nexus_gen.scoring.clip import load_clip
        from nexus_gen.scoring.dino import load_dino

        scorer = EditScorer(load_clip(cfg.clip, device=cfg.device), load_dino(cfg.dino, device=cfg.device),
                            metrics=("clip_t", "clip_i", "clip_dir", "dino", "l1", "l2", "l1_masked"))
        triplets, want = [], []
        for item, path, _ in todo:
            # (target, edited): MagicBrush's metrics, edited resized to the target; with the mask
            if item.target is not None:
                triplets.append(EditTriplet(f"{item.id}\0t", item.target, path,
                                            target_caption=item.target_caption, mask=item.mask))
                want.append((item.id, "t"))
            # (source, edited): directional CLIP and Emu Edit's source-side scores
            triplets.append(EditTriplet(f"{item.id}\0s", item.source, path,
                                        source_caption=item.source_caption,
                                        target_caption=item.target_caption))
            want.append((item.id, "s"))
        scored = scorer.score_all(triplets)
        by_item: dict[str, dict[str, Any]] = {}
        for (iid, side), r in zip(want, scored):
            row = by_item.setdefault(iid, {m: None for m in METRICS} | {"error": None})
            if r["error"]:
                row["error"] = row["error"] or r["error"]
                continue
            if side == "t":
                row.update(l1=r["l1"], l2=r["l2"], clip_i=r["clip_i"], dino=r["dino"],
                           clip_t=r["clip_t"], l1_inside=r["l1_inside"], l1_outside=r["l1_outside"])
            else:
                row.update(clip_dir=r["clip_dir"], clip_i_source=r["clip_i"],
                           dino_source=r["dino"], l1_source=r["l1"])
                if r["clip_t"] is not None and row["clip_t"] is None:
                    row["clip_t"] = r["clip_t"]  # no target image: CLIP-T vs the target caption
        from nexus_gen.scoring.image_inputs import load_rgb

        for item, path, digest in todo:
            row = by_item[item.id]
            if row["error"] is None:
                row.update(_verdict(item, load_rgb(path)))
            rows[item.id] = {"id": item.id, "edit_type": item.edit_type, "language": item.language,
                             "edited_sha256": digest, "models": models, "success": None, **row}
    ordered = [rows[i.id] for i in plan.items if i.id in rows]
    _write_jsonl(plan.out / SCORES_FILE, ordered)
    _write_gallery(plan)
    return ordered


def _write_gallery(plan: Plan) -> None:
    """A source / edited / target grid of the first few edited items (`gallery.png`)."""
    from eval.report import figure_png
    from matplotlib.figure import Figure as MplFigure

    from nexus_gen.scoring.image_inputs import load_rgb

    shown = [i for i in plan.items if (plan.out / i.edited_path).is_file()][:GALLERY_ITEMS]
    if not shown:
        return
    fig = MplFigure(figsize=(6.0, 2.1 * len(shown)))
    for r, item in enumerate(shown):
        cells = [("source", item.source), ("edited", plan.out / item.edited_path), ("target", item.target)]
        for c, (name, img) in enumerate(cells):
            ax = fig.add_subplot(len(shown), 3, r * 3 + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(load_rgb(img))
            else:
                ax.text(0.5, 0.5, "no target", ha="center", va="center", fontsize=8)
            title = name if c else f"{item.edit_type}: {item.instruction[:38]}"
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    (plan.out / GALLERY_FILE).write_bytes(figure_png(fig, dpi=80))


def judge_step(plan: Plan) -> list[dict[str, Any]]:
    """Judge every edited image with each protocol (answers cached); writes judgments.jsonl and,
    for GEdit-Bench data, the official score CSVs, for ImgEdit the official result.json."""
    from eval.editing.edit_judge import (AnswerCache, Judging, build_judge, judge_gedit,
                                         judge_imgedit, load_prompts, run_judgments)
    from nexus_gen.scoring.image_inputs import load_rgb

    if not plan.protocols:
        return []
    cfg = plan.config
    backend = build_judge(cfg.judge or "", cfg.judge_model, cfg.device)
    j = Judging(backend, AnswerCache(plan.out / JUDGE_CACHE_FILE), retries=cfg.retries,
                backoff=float(plan.extra.get("judge_backoff", 1.0)), concurrency=cfg.concurrency)
    items = [i for i in plan.items if (plan.out / i.edited_path).is_file()]
    rows: list[dict[str, Any]] = []
    for protocol in plan.protocols:
        prompts = load_prompts(protocol, cfg.imgedit_prompts)

        def task(item: EditItem, protocol: str = protocol, prompts=prompts):
            src, ed = load_rgb(item.source), load_rgb(plan.out / item.edited_path)
            if protocol == "gedit":
                r = judge_gedit(j, prompts, item.id, item.instruction, src, ed)
            else:
                r = judge_imgedit(j, prompts, item.id, item.instruction, item.edit_type, src, ed)
            return {**r, "judge": backend.judge_id, "edit_type": item.edit_type,
                    "language": item.language,
                    "intersection_exist": item.extra.get("intersection_exist")}

        rows += run_judgments(j, [lambda it=it: task(it) for it in items], len(items),
                              desc=f"judge {protocol}")
    _write_jsonl(plan.out / JUDGMENTS_FILE, rows)
    _official_files(plan, rows, backend.judge_id)
    plan.extra["judge_calls"] = j.calls
    return rows


def _official_files(plan: Plan, rows: list[dict[str, Any]], judge_id: str) -> None:
    """The benchmark's own result files, so its official statistics scripts run on our output."""
    from eval.editing.gedit import write_csvs
    from eval.editing.edit_items import file_name

    by_id = {i.id: i for i in plan.items}
    model = plan.config.editor_spec().model_name
    if plan.loaded.kind == "gedit":
        ok = [r for r in rows if r["protocol"] == "gedit" and r["status"] == "ok"]
        csv_rows = [{"task_type": by_id[r["id"]].edit_type,
                     "source_image": str(plan.out / by_id[r["id"]].extra["source_path"]),
                     "edited_image": str(plan.out / by_id[r["id"]].edited_path),
                     "instruction": by_id[r["id"]].instruction, "sementics_score": r["SC"],
                     "quality_score": r["PQ"], "intersection_exist": r["intersection_exist"],
                     "instruction_language": r["language"]} for r in ok]
        write_csvs(csv_rows, plan.out / "gedit_scores" / model / file_name(judge_id) / "eval_results_new", model)
    if plan.loaded.kind == "imgedit":
        answers = {r["id"]: r.get("answers", {}).get("answer") for r in rows
                   if r["protocol"] == "imgedit" and r.get("answers")}
        write_json_atomic(plan.out / "edited" / "result.json", answers)


def _mean(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def metric_means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over the rows that have it, the row count and the exact-success rate
    (over rows with a verdict)."""
    ok = [r for r in rows if r.get("error") is None]
    out: dict[str, Any] = {"n": len(ok)}
    for m in METRICS:
        out[m] = _mean([r.get(m) for r in ok])
    verdicts = [r["success"] for r in ok if r.get("success") is not None]
    out["success"] = sum(verdicts) / len(verdicts) if verdicts else None
    out["n_success"] = len(verdicts)
    for part in ("edit_done", "preserved"):  # the two halves of success, to see which one fails
        vals = [r[part] for r in ok if r.get(part) is not None]
        if vals:
            out[part] = sum(vals) / len(vals)
    return out


def judge_summary(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Per protocol: outcome counts and the official aggregates of the scored judgments."""
    from eval.editing import gedit, imgedit
    from eval.editing.edit_judge import count_outcomes

    out: dict[str, Any] = {}
    for protocol in sorted({r["protocol"] for r in rows}):
        prow = [r for r in rows if r["protocol"] == protocol]
        ok = [r for r in prow if r["status"] == "ok"]
        entry: dict[str, Any] = {"judged": len(prow), "scored": len(ok), **count_outcomes(prow),
                                 "prompt_version": prow[0]["prompt_version"], "judge": prow[0].get("judge")}
        if protocol == "gedit":
            langs = sorted({r["language"] for r in ok}) or ["en"]
            entry["languages"] = {
                lang: gedit.aggregate([{"task_type": r["edit_type"], "language": r["language"], "sc": r["SC"],
                                        "pq": r["PQ"], "intersection_exist": r.get("intersection_exist")}
                                       for r in ok], lang) for lang in langs}
        else:
            entry.update(imgedit.aggregate([{"edit_type": r["edit_type"], "score": r["score"]} for r in ok]))
        out[protocol] = entry
    return out


def summarize(plan: Plan, edits: dict[str, Any], rows: list[dict[str, Any]],
              judgments: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """summary.json: the denominators (planned = items + skipped; items = scored + not edited +
    score errors), metrics overall and per edit type, the judges' aggregates."""
    errors: dict[str, int] = {}
    for r in rows:
        if r.get("error"):
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    types = sorted({i.edit_type for i in plan.items})
    summary = {
        "benchmark": BENCHMARK, "data": plan.config.data, "data_kind": plan.loaded.kind,
        "editor": plan.config.editor, "editor_model_id": plan.extra.get("editor_model_id"),
        "planned": len(plan.items) + len(plan.loaded.skipped), "items": len(plan.items),
        "skipped": len(plan.loaded.skipped), "skipped_reasons": _reasons(plan.loaded.skipped),
        "edited": edits.get("edited", 0), "kept": edits.get("kept", 0),
        "not_edited": edits.get("failed", {}), "scored": sum(1 for r in rows if not r.get("error")),
        "score_errors": errors, "models": {"clip": plan.config.clip, "dino": plan.config.dino},
        "overall": metric_means(rows),
        "by_edit_type": {t: metric_means([r for r in rows if r["edit_type"] == t]) for t in types},
        "judges": judge_summary(judgments or [], plan.loaded.kind),
    }
    write_json_atomic(plan.out / SUMMARY_FILE, summary, sort_keys=True)
    return summary


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The last line the command prints: denominators and the overall numbers."""
    ov = summary["overall"]
    out: dict[str, Any] = {"items": summary["items"], "scored": summary["scored"],
                           "skipped": summary["skipped"]}
    out.update({m: None if ov[m] is None else round(ov[m], 6) for m in HEADLINE})
    if ov.get("n_success"):
        out["success"] = round(ov["success"], 6)
    for protocol, j in summary.get("judges", {}).items():
        if protocol == "gedit":
            for lang, agg in j["languages"].items():
                for m in ("SC", "PQ", "O"):
                    v = agg["average"][m]
                    out[f"gedit_{lang}_{m}"] = None if v is None else round(v, 4)
        else:
            out["imgedit_overall"] = None if j.get("overall") is None else round(j["overall"], 4)
        out[f"{protocol}_not_scored"] = j["judged"] - j["scored"]
    return out


def run(plan: Plan) -> dict[str, Any]:
    """All steps in order, without Prefect (the flow runs the same steps as tasks)."""
    from eval.editing.edit_report import write_editing_report

    prepare(plan)
    edits = edit_step(plan)
    rows = score_step(plan)
    judgments = judge_step(plan)
    summary = summarize(plan, edits, rows, judgments)
    write_editing_report(plan.out)
    return summary
