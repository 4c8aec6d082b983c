"""GenEval report content: per-tag results, a bar chart, the comparison with the published overall
scores (NEXUS_GEN.md), the prompts used, the config (model ids, seeds, options, versions); and a
side-by-side report of several runs (e.g. the demo's ground truth vs a tiny random pipeline)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from eval.geneval.detections_file import read_jsonl
from eval.geneval.rules import PAPER_NAMES
from eval.report import Report, Section, Table, bar_chart, figure_png, read_run_config
from nexus_gen.scoring.clip_profiles import expand_profile

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# Published GenEval overall scores (NEXUS_GEN.md), all on the official 553 prompts.
REFERENCE_SCORES: tuple[tuple[str, float, str], ...] = (
    ("GPT-4o", 0.84, ""),
    ("BAGEL", 0.82, "0.88 with prompt rewriting"),
    ("Nexus-Gen (V2)", 0.81, ""),
    ("Janus-Pro-7B", 0.80, ""),
    ("SD3-Medium", 0.74, ""),
    ("FLUX.1-dev", 0.66, "about 0.66"),
)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run has not been scored yet "
                                f"(re-run the benchmark with the same --out to finish it)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of an official `results.jsonl` (missing file -> empty list; a bad line raises
    ValueError naming `path:line`)."""
    if not path.is_file():
        return []
    return [row for _, row in read_jsonl(path)]


def per_tag_counts(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """tag -> (images, correct images), tags in GenEval's order then any others."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["tag"], [0, 0])
        c[0] += 1
        c[1] += int(bool(r["correct"]))
    order = [t for t in TAGS if t in counts] + sorted(t for t in counts if t not in TAGS)
    return {t: (counts[t][0], counts[t][1]) for t in order}


def _num(v: Any) -> Optional[float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v)):
        return float(v)
    return None


def _comparable(config: dict[str, Any]) -> list[str]:
    """Reasons this run's overall score is not comparable with the published ones (empty if it is)."""
    why = []
    ps = config.get("prompt_set", {})
    if config.get("benchmark") != "geneval" or ps.get("name") != "geneval":
        why.append(f"prompt set `{ps.get('name')}` is not the official GenEval prompt set")
    if ps.get("n_used") is not None and ps.get("n_total") is not None \
            and ps["n_used"] < ps["n_total"]:
        why.append(f"only {ps['n_used']} of {ps['n_total']} prompts were used (--limit)")
    det = config.get("detector", {}).get("name")
    if config.get("benchmark") == "geneval" and det is not None:
        if det not in PAPER_NAMES:
            why.append(f"detector `{det}` is not the official Mask2Former Swin-S COCO")
    clip = config.get("classifier", {}).get("name")
    if config.get("benchmark") == "geneval" and clip is not None and not _official_clip(clip):
        why.append(f"colour classifier `{clip}` is not the official CLIP ViT-L/14 (OpenAI weights)")
    if config.get("benchmark") == "geneval" and clip is not None:
        precision, device = _colour_precision(config)
        if precision != "amp" or not device.startswith("cuda"):
            why.append(f"colours were classified in {precision} on {device}, not the official "
                       "fp16 autocast (amp) on CUDA: near-tie colours can differ")
    return why


def _colour_precision(config: dict[str, Any]) -> tuple[str, str]:
    """(precision, device) of the run's CLIP colour classification; runs recorded before the
    precision was ran in fp32."""
    clf = config.get("classifier", {})
    device = clf.get("device") or config.get("generator", {}).get("device") or "cpu"
    return str(clf.get("precision") or "fp32"), str(device)


def _official_clip(spec: str) -> bool:
    """True for the spellings of GenEval's colour classifier: the `paper` profile or ViT-L-14 with
    the OpenAI weights (which always run with QuickGELU, named so or not)."""
    model, _, weights = expand_profile(spec).partition(":")
    return model.removesuffix("-quickgelu") == "ViT-L-14" and weights == "openai"


def _sample_image(run_dir: Path, filename: str):
    """A results row's image: its `<idx>/samples/<n>.png` under the run directory (which may have
    moved since scoring), else the path as written; None if neither exists."""
    from eval.geneval.score import open_image

    for p in (run_dir.joinpath(*Path(filename).parts[-3:]), Path(filename)):
        if p.is_file():
            return open_image(p)
    return None


def sample_gallery(run_dir: Path, rows: Sequence[dict[str, Any]], per_tag: int = 1) -> Optional[bytes]:
    """PNG of the first `per_tag` scored images of each tag, titled with prompt and verdict."""
    import textwrap

    from matplotlib.figure import Figure as MplFigure

    picks: list[dict[str, Any]] = []
    for tag in TAGS:
        picks += [r for r in rows if r["tag"] == tag][:per_tag]
    shown = [(r, im) for r in picks if (im := _sample_image(run_dir, r["filename"])) is not None]
    if not shown:
        return None
    cols = min(6, len(shown))
    nrows = (len(shown) + cols - 1) // cols
    fig = MplFigure(figsize=(2.0 * cols, 2.5 * nrows))
    for k, (r, im) in enumerate(shown):
        ax = fig.add_subplot(nrows, cols, k + 1)
        ax.imshow(im)
        ax.set_axis_off()
        verdict = "correct" if r["correct"] else "wrong"
        ax.set_title("\n".join(textwrap.wrap(r["prompt"], 24)[:3]) + f"\n[{verdict}]", fontsize=7,
                     color="#1a7f37" if r["correct"] else "#b42318")
    return figure_png(fig)


def build_geneval_report(run_dir: Path) -> Report:
    """The report of one GenEval (or GenEval-scenes) run directory."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    summary = _read_json(run_dir / "summary.json")
    rows = read_results(run_dir / "results.jsonl")
    counts = per_tag_counts(rows)
    gen = config.get("generation", {})
    ps = config.get("prompt_set", {})
    model_id = gen.get("model_id") or config.get("generator", {}).get("name")
    overall = _num(summary.get("overall"))

    head = Section("Summary", text=[
        f"Generator: `{model_id}`. Benchmark: `{config.get('benchmark')}`. "
        f"Prompt set: `{ps.get('name')}` ({ps.get('n_used')} of {ps.get('n_total')} prompts, "
        f"from `{ps.get('file')}`, sha256 `{str(ps.get('sha256'))[:16]}...`), "
        f"{config.get('n_images')} images per prompt.",
        "Prompts are used exactly as written in the prompt file: no prompt rewriting "
        "(rewriting inflates GenEval scores, e.g. BAGEL 0.82 -> 0.88).",
    ], tables=[Table(["metric", "value"], [
        ["overall (mean of per-tag accuracies)", overall],
        ["correct images", _num(summary.get("correct_images"))],
        ["correct prompts (any image correct)", _num(summary.get("correct_prompts"))],
        ["images scored", summary.get("n_images")],
        ["prompts scored", summary.get("n_prompts")],
    ])])

    tag_rows = []
    for tag in list(TAGS) + [t for t in counts if t not in TAGS]:
        n, ok = counts.get(tag, (0, 0))
        tag_rows.append([tag, n, ok, _num(summary.get(tag))])
    present = [r for r in tag_rows if r[3] is not None]
    figures = []
    if present:
        from eval.report import Figure

        png = bar_chart([r[0] for r in present], {str(model_id): [r[3] for r in present]},
                        title=f"GenEval per-tag accuracy: {model_id}")
        figures.append(Figure("geneval_per_tag", png, caption="Per-tag image accuracy"))
    gallery = sample_gallery(run_dir, rows)
    if gallery is not None:
        figures.append(Figure("geneval_samples", gallery,
                              caption="One generated image per tag, with its prompt and verdict"))
    tags = Section("Per-tag results", tables=[Table(
        ["tag", "images", "correct", "accuracy"], tag_rows,
        note="Tags without images in this run show a dash and do not enter the overall score.")],
        figures=figures)

    why = _comparable(config)
    ref_rows: list[list[Any]] = [[name, score, note] for name, score, note in REFERENCE_SCORES]
    ref_rows.append([f"this run: {model_id}", overall,
                     "comparable" if not why else "not comparable: " + "; ".join(why)])
    ref_rows.sort(key=lambda r: -(r[1] if r[1] is not None else -1.0))
    compare = Section("Comparison with published GenEval scores", text=[
        "Published overall scores on the official 553 prompts (NEXUS_GEN.md). "
        + ("This run used the same protocol." if not why else
           "This run is **not** directly comparable: " + "; ".join(why) + "."),
    ], tables=[Table(["model", "overall", "note"], ref_rows)])

    seeds = gen.get("seeds", {})
    first = next(iter(seeds.items()), None)
    setup = Section("Configuration", text=[
        f"Detector: `{config.get('detector', {}).get('model_id') or config.get('detector', {}).get('name')}`; "
        f"colour classifier: `{config.get('classifier', {}).get('model_id') or config.get('classifier', {}).get('name')}`"
        + (" in {} on {}.".format(*_colour_precision(config))
           if config.get("benchmark") == "geneval" else "."),
        f"Seeds: base seed {config.get('base_seed')}, one seed per image "
        f"(`{gen.get('seed_rule', 'see generation.json')}`), all listed in `generation.json`"
        + (f"; e.g. prompt {first[0]}: {first[1]}." if first else "."),
        "Scoring options: " + ", ".join(f"`{k}={v}`" for k, v in config.get("options", {}).items()) + ".",
    ], code=json.dumps({k: v for k, v in config.items() if k != "generation"}, indent=2, sort_keys=True))
    return Report(f"GenEval report: {model_id}", [head, tags, compare, setup])


def build_comparison_report(run_dirs: Sequence[Path], title: str = "GenEval runs side by side",
                            links_from: Optional[Path] = None) -> Report:
    """One report over several scored runs: per-tag accuracy per run, table and grouped bar chart.
    Each run's own report is linked relative to `links_from` (where this report is written;
    default: the runs' common parent)."""
    import os

    from eval.report import Figure

    runs = []
    for d in run_dirs:
        config = read_run_config(d)
        summary = _read_json(Path(d) / "summary.json")
        name = config.get("generation", {}).get("model_id") or config.get("generator", {}).get("name")
        runs.append((Path(d), config, summary, str(name)))
    if not runs:
        raise ValueError("a comparison report needs at least one run directory")
    base = Path(links_from) if links_from is not None else Path(
        os.path.commonpath([str(d.resolve().parent) for d, _, _, _ in runs]))
    tags = [t for t in TAGS if any(_num(s.get(t)) is not None for _, _, s, _ in runs)]
    rows = [[t] + [_num(s.get(t)) for _, _, s, _ in runs] for t in tags]
    rows.append(["overall"] + [_num(s.get("overall")) for _, _, s, _ in runs])
    rows.append(["correct prompts"] + [_num(s.get("correct_prompts")) for _, _, s, _ in runs])
    png = bar_chart(tags + ["overall"], {name: [r[i + 1] or 0.0 for r in rows[:-1]]
                                         for i, (_, _, _, name) in enumerate(runs)},
                    title="Per-tag accuracy by generator")

    def link(d: Path) -> str:
        target = Path(os.path.relpath((d / "report.html").resolve(), base.resolve())).as_posix()
        return f"[{target}]({target})"

    lines = "\n".join(
        f"- `{name}`: run directory `{d}` ({c.get('benchmark')}, prompt set "
        f"`{c.get('prompt_set', {}).get('name')}`, {c.get('prompt_set', {}).get('n_used')} prompts x "
        f"{c.get('n_images')} images, base seed {c.get('base_seed')}); its own report: "
        f"{link(d)}" for d, c, _, name in runs)
    return Report(title, [Section("Runs", text=[lines]), Section(
        "Per-tag accuracy", tables=[Table(["tag"] + [n for _, _, _, n in runs], rows)],
        figures=[Figure("comparison_per_tag", png, caption="Per-tag accuracy of each run")])])
