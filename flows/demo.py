"""`make demo`: the whole evaluation path in a few minutes on a laptop CPU, offline.

Steps (each a function, run in order by `demo_flow`): convert the reference system's own examples
(embedded in `datasets_spec/examples/`) into shards, validate them and export them to the
reference jsonl and DiffSynth csv; then GenEval-scenes with the ground-truth
renderer (the ceiling: ~1.0) and with a tiny random-init diffusers pipeline (the floor: ~0.0),
each a full generate -> detect -> score -> report run, then one side-by-side report.

    python -m flows.demo --out runs/demo
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from prefect import flow

log = logging.getLogger("flows.demo")  # not "__main__" under `python -m`

EXAMPLES = Path(__file__).resolve().parents[1] / "datasets_spec" / "examples" / "nexus_gen_example"

# (run directory name, generator, image size): the two ends of the scale.
SCENES_RUNS: tuple[tuple[str, str, Optional[int]], ...] = (
    ("geneval-scenes-ground-truth", "ground-truth", 256),
    ("geneval-scenes-tiny", "tiny", None),  # the tiny pipeline's native 64 px
)


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
    return {"convert": summary.counts(), "by_task": summary.by_task, "exports": exported}


def run_scenes_benchmark(out: Path, name: str, generator: str, size: Optional[int],
                         limit: Optional[int], n_images: int) -> Path:
    """One GenEval-scenes run (a Prefect subflow) into `out/name`; returns its run directory."""
    from flows.evaluate import geneval_scenes_flow

    run_dir = out / name
    summary = geneval_scenes_flow(generator=generator, out=str(run_dir), limit=limit,
                                  n_images=n_images, size=size, steps=2 if generator == "tiny" else None)
    log.info("%s: overall %.3f -> %s", generator, summary["overall"], run_dir / "report.html")
    return run_dir


def write_side_by_side_report(out: Path, run_dirs: Sequence[Path]) -> Path:
    """The demo's own report (every run's per-tag accuracy side by side), also posted to Prefect."""
    from eval.report import write_report
    from eval.report_geneval import build_comparison_report
    from flows.evaluate import post_report_artifacts

    report = build_comparison_report(
        run_dirs, title="nexus-gen demo: GenEval-scenes, ground truth vs a tiny random pipeline")
    _, html = write_report(report, out)
    post_report_artifacts(report, "demo")
    return html


@flow(name="demo")
def demo_flow(out: str, limit: Optional[int] = None, n_images: int = 2) -> dict[str, Any]:
    """All demo steps in one Prefect flow run (one ephemeral server for the whole demo)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    data = convert_examples(root)
    run_dirs = [run_scenes_benchmark(root, name, generator, size, limit, n_images)
                for name, generator, size in SCENES_RUNS]
    html = write_side_by_side_report(root, run_dirs)
    summaries = {d.name: json.loads((d / "summary.json").read_text(encoding="utf-8"))["overall"]
                 for d in run_dirs}
    log.info("demo report: %s", html)
    return {"report": str(html), "overall": summaries, "data": data}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo output directory")
    parser.add_argument("--limit", type=int, default=None,
                        help="a tag-balanced subset of the scenes prompts (default: all 408)")
    parser.add_argument("--n-images", type=int, default=2, help="images per prompt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("flows", "eval", "nexus_gen"):  # Prefect sets the root logger to WARNING
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.n_images < 1:
        parser.error(f"--n-images must be >= 1, got {args.n_images}")
    result = demo_flow(out=str(args.out), limit=args.limit, n_images=args.n_images)
    log.info("done: overall %s; open %s", result["overall"], result["report"])


if __name__ == "__main__":
    main()
