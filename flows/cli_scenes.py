"""`nexus-gen scenes ...`: look at the procedural scenes world."""
from pathlib import Path

import typer

app = typer.Typer(help="The procedural scenes world: sample, inspect.", no_args_is_help=True)


@app.command("sample")
def sample(
    out: Path = typer.Option(..., "--out", help="Directory for contact_sheet.png and sample.json."),
    n: int = typer.Option(16, "--n", help="Number of scene/edit cells."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same sheet."),
    size: int = typer.Option(192, "--size", help="Side of each rendered scene in pixels."),
) -> None:
    """Write a contact sheet of random scenes, their edits and instructions (EN), plus a JSON
    file with captions and instructions in English and Chinese."""
    import json
    import logging

    if n < 1:
        raise typer.BadParameter(f"--n must be >= 1, got {n}")
    if size < 32:
        raise typer.BadParameter(f"--size must be >= 32 pixels, got {size}")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"--out {out} exists and is not a directory")
    from nexus_gen.scenes.sheet import contact_sheet, record, sample_edits

    edits = sample_edits(n, seed, size)
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet(edits).save(out / "contact_sheet.png")
    (out / "sample.json").write_text(
        json.dumps([record(e) for e in edits], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    logging.getLogger(__name__).info("wrote %s and %s (%d cells)", out / "contact_sheet.png",
                                     out / "sample.json", n)


@app.command("prompts")
def prompts(
    out: Path = typer.Option(None, "--out", help="Output jsonl (default: the shipped "
                             "datasets_spec/geneval_scenes/evaluation_metadata.jsonl)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed (the shipped file uses 0)."),
) -> None:
    """Write the GenEval-schema scenes prompt set."""
    import logging

    from nexus_gen.scenes.prompts import SHIPPED, write_prompts

    path = write_prompts(out or SHIPPED, seed)
    logging.getLogger(__name__).info("wrote %s", path)
