"""`make demo`: the whole evaluation path in a few minutes on a laptop CPU, offline.

Steps (each a function, run in order by `demo_flow`): convert the reference system's own examples
(embedded in `datasets_spec/examples/`) into shards, validate them and export them to the
reference jsonl and DiffSynth csv; build `datasets_spec/recipes/demo.yaml` (edit triplets on
scenes and the repo's photos, scored, mixed with the examples, split into train and test) and
`demo_imagepulse.yaml` (the real-model backend with tiny models on photos);
then GenEval-scenes with the ground-truth
renderer (the ceiling: ~1.0) and with a tiny random-init diffusers pipeline (the floor: ~0.0),
each a full generate -> detect -> score -> report run, then one side-by-side report that says what
the numbers mean and what the data step did.

    nexus-gen demo --out runs/demo       (or: python -m flows.demo --out runs/demo)
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from flows.runtime import set_env_defaults

set_env_defaults()  # under `python -m flows.demo` prefect is imported here, before the CLI's own call

from prefect import flow  # noqa: E402

log = logging.getLogger("flows.demo")  # not "__main__" under `python -m`

EXAMPLES = Path(__file__).resolve().parents[1] / "datasets_spec" / "examples" / "nexus_gen_example"

# (run directory name, generator, image size, at most this many prompts): the two ends of the
# scale. Both at or above the pixel detector's minimum size (eval.geneval.run.SCENES_MIN_SIZE);
# the tiny pipeline costs about 1 s per 136 px image on a CPU core, so its floor is measured
# on a tag-balanced 24 prompts (4 per tag).
SCENES_RUNS: tuple[tuple[str, str, Optional[int], Optional[int]], ...] = (
    ("geneval-scenes-ground-truth", "ground-truth", 256, None),
    ("geneval-scenes-tiny", "tiny", 136, 24),
)
# What each generator's score stands for, said in the terminal and in the report.
MEANING = {
    "ground-truth": "the ceiling: the scenes world's exact picture of every prompt (1.0 = all correct)",
    "tiny": "the floor: a tiny random-init pipeline, what a model that learned nothing gets (~0.0)",
}


def convert_examples(out: Path) -> dict[str, Any]:
    """The data path on real data: reference examples -> shards -> validate -> both exports."""
    from nexus_gen.data.check import validate_shards
    from nexus_gen.data.convert import convert_file
    from nexus_gen.data.export import export

    shards = out / "data" / "shards"
    summary = convert_file("nexus-gen-jsonl", EXAMPLES / "llm_dataset.jsonl", shards, images_root=EXAMPLES)
    report = validate_shards(shards)
    if not report.ok:
        raise RuntimeError(f"demo shards failed validation: {report.problems}")
    exported = {fmt: export(fmt, shards, out / "data" / f"export-{fmt}").to_json()
                for fmt in ("nexus-gen-jsonl", "diffsynth-csv")}
    log.info("examples: %s; by task %s; exports in %s", summary.counts(), summary.by_task, out / "data")
    return {"convert": summary.counts(), "by_task": summary.by_task, "validate": report.to_json(),
            "exports": exported}


# (run folder, recipe): the scenes backend on scenes and photos (exact ground truth), and the
# imagepulse backend (grounded inpainting, InstantStyle, VLM texts) with tiny models on photos.
DEMO_BUILDS: tuple[tuple[str, str], ...] = (("build", "demo"), ("build-imagepulse", "demo_imagepulse"))


def build_demo_data(out: Path) -> list[dict[str, Any]]:
    """The data-building job on the demo recipes (Prefect subflows, two shards at a time) into
    `out/<folder>`; returns their run records (`run.json`), each with its folder as `dir`."""
    from flows.build import build_flow, task_runner

    flow = build_flow.with_options(task_runner=task_runner("threads", 2, None))
    records = []
    for folder, recipe in DEMO_BUILDS:
        run_dir = out / folder
        record = flow(recipe=recipe, out=str(run_dir))
        c = record["counts"]
        log.info("build %s: %d triplets, %d samples, %d rejected -> %s", recipe, c["triplets"],
                 c["samples"], c["rejected"], run_dir)
        records.append({**record, "dir": str(run_dir)})
    return records


def run_scenes_benchmark(out: Path, name: str, generator: str, size: Optional[int],
                         limit: Optional[int], n_images: int, max_prompts: Optional[int] = None) -> Path:
    """One GenEval-scenes run (a Prefect subflow) into `out/name`, on at most `max_prompts`
    prompts; returns its run directory."""
    from flows.evaluate import geneval_scenes_flow

    run_dir = out / name
    if max_prompts is not None:
        limit = max_prompts if limit is None else min(limit, max_prompts)
    summary = geneval_scenes_flow(generator=generator, out=str(run_dir), limit=limit,
                                  n_images=n_images, size=size, steps=2 if generator == "tiny" else None)
    log.info("%s: overall %.3f -> %s", generator, summary["overall"], run_dir / "report.html")
    return run_dir


def meaning_section(run_dirs: Sequence[Path]):
    """The report section (and terminal text) that says what the overall scores mean."""
    from eval.report import Section, Table

    rows = []
    for d in run_dirs:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        generator = config["generator"]["name"]
        overall = json.loads((d / "summary.json").read_text(encoding="utf-8"))["overall"]
        rows.append([generator, overall, MEANING.get(generator, "")])
    return Section("What the numbers mean", text=[
        "Each score is GenEval's overall accuracy, the mean of the per-tag accuracies, from 0 to 1 "
        "(the share of images whose objects, counts, colours and positions the detector confirms). "
        "The two runs mark the two ends of the scale: a generator under test lands between them."],
        tables=[Table(["generator", "overall", "what it stands for"], rows)])


def data_section(data: dict[str, Any]):
    """The report section summarising the data step: convert, validate and export counts."""
    from eval.report import Section, Table

    c, v = data["convert"], data["validate"]
    rows: list[list[Any]] = [
        ["convert (nexus-gen-jsonl)", c["input"], c["accepted"], c["rejected"],
         ", ".join(f"{k} {n}" for k, n in data["by_task"].items())],
        ["validate", v["samples"], v["samples"] if v["ok"] else None, v["problems"],
         "ok" if v["ok"] else "problems found"]]
    for fmt, e in data["exports"].items():
        skipped = sum(e["skipped"].values())
        rows.append([f"export {fmt}", e["samples"], e["samples"] - skipped, skipped,
                     ", ".join(f"{k} {n}" for k, n in e["written"].items())
                     + (f"; skipped: {', '.join(f'{k} {n}' for k, n in e['skipped'].items())}"
                        if skipped else "")])
    return Section("Data step", text=[
        "The reference system's own examples (`datasets_spec/examples/`) converted into shards, "
        "validated, and exported to the reference jsonl and DiffSynth-Studio csv, in `data/`."],
        tables=[Table(["step", "in", "out", "rejected / problems / skipped", "by task"], rows)])


def write_side_by_side_report(out: Path, run_dirs: Sequence[Path], data: dict[str, Any],
                              build_dirs: Sequence[Path] = ()) -> Path:
    """The demo's own report: what the numbers mean, every run's per-tag accuracy side by side
    with links to each run's report, the data step, and the build (counts, a triplet grid, score
    distributions per edit type); also posted to Prefect."""
    from eval.report import write_report
    from eval.report_build import build_sections
    from eval.report_geneval import build_comparison_report
    from flows.evaluate import post_report_artifacts

    report = build_comparison_report(
        run_dirs, title="nexus-gen demo: GenEval-scenes, ground truth vs a tiny random pipeline",
        links_from=out)
    report.sections[:0] = [meaning_section(run_dirs)]
    report.sections.append(data_section(data))
    for d in build_dirs:
        report.sections += build_sections(d)
    _, html = write_report(report, out)
    post_report_artifacts(report, "demo")
    return html


@flow(name="demo")
def demo_flow(out: str, limit: Optional[int] = None, n_images: int = 2) -> dict[str, Any]:
    """All demo steps in one Prefect flow run (one ephemeral server for the whole demo)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    data = convert_examples(root)
    builds = build_demo_data(root)
    run_dirs = [run_scenes_benchmark(root, name, generator, size, limit, n_images, max_prompts)
                for name, generator, size, max_prompts in SCENES_RUNS]
    html = write_side_by_side_report(root, run_dirs, data, [Path(b["dir"]) for b in builds])
    summaries = {d.name: json.loads((d / "summary.json").read_text(encoding="utf-8"))["overall"]
                 for d in run_dirs}
    log.info("demo report: %s", html)
    return {"report": str(html), "overall": summaries, "runs": [str(d) for d in run_dirs], "data": data,
            "builds": builds}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m flows.demo ...`: the same as `nexus-gen demo ...`."""
    from flows.cli import app

    app(["demo", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m flows.demo")


if __name__ == "__main__":
    main()
