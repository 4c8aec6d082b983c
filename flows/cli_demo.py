"""`nexus-gen demo`: the whole path on a laptop CPU, offline (see `flows.demo`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Demo output directory."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="A tag-balanced subset of the scenes prompts (default: all 408 for the "
                                        "ground truth, 24 for the slow tiny pipeline)."),
    n_images: int = typer.Option(2, "--n-images", min=1, help="Images per prompt."),
) -> None:
    """Convert, validate and export the reference examples, build the demo recipe (edit triplets
    on scenes and photos), then GenEval-scenes with the ground-truth renderer (the ceiling) and a
    tiny random pipeline (the floor), side by side."""
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    from flows.demo import demo_flow, meaning_section
    from flows.runtime import run_flow

    result = run_flow(demo_flow, out=str(out), limit=limit, n_images=n_images,
                      resume_hint=f"rerun `nexus-gen demo --out {out}` to go on")
    table = meaning_section([Path(d) for d in result["runs"]]).tables[0]
    typer.echo("GenEval-scenes overall accuracy (mean of the per-tag accuracies, 0 to 1):")
    width = max(len(str(r[0])) for r in table.rows)
    for generator, overall, meaning in table.rows:
        typer.echo(f"  {generator:<{width}}  {overall:.3f}  {meaning}")
    data = result["data"]["convert"]
    typer.echo(f"data: {data['accepted']} of {data['input']} reference examples converted, validated "
               f"and exported to {out / 'data'}")
    for b in result["builds"]:
        c = b["counts"]
        typer.echo(f"build (datasets_spec/recipes/{b['recipe']}.yaml): {c['planned']} planned = "
                   f"{c['triplets']} triplets + {c['rejected']} rejected; {c['samples']} samples "
                   f"({', '.join(f'{k} {n}' for k, n in sorted(b['by_task'].items()))}) in {b['dir']}")
    typer.echo(f"report: {result['report']}")


def register(root: typer.Typer) -> None:
    """Add `nexus-gen demo` to the root app."""
    root.command("demo")(demo)
