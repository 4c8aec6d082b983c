"""`nexus-gen scenes ...`: look at the procedural scenes world and write its prompt set."""
from pathlib import Path

import typer

from flows.runtime import fail

app = typer.Typer(help="The procedural scenes world: a contact sheet of samples, the GenEval-schema "
                  "prompt set.", no_args_is_help=True)


@app.command("sample")
def sample(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for contact_sheet.png and sample.json."),
    n: int = typer.Option(16, "--n", min=1, help="Number of scene/edit cells."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same sheet."),
    size: int = typer.Option(192, "--size", min=32, help="Side of each rendered scene in pixels."),
) -> None:
    """Write a contact sheet of random scenes, their edits and instructions (EN), plus a JSON
    file with captions and instructions in English and Chinese."""
    import json
    import logging

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
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
    out: Path = typer.Option(..., "--out", "-o", help="The jsonl file to write (the shipped set is "
                             "datasets_spec/geneval_scenes/evaluation_metadata.jsonl, seed 0)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed (the shipped file uses 0)."),
) -> None:
    """Write the GenEval-schema scenes prompt set to a jsonl file."""
    import logging

    from nexus_gen.scenes.prompts import write_prompts

    if out.is_dir():
        fail(f"--out {out} is a directory: give a file path, e.g. {out / 'prompts.jsonl'}")
    if out.parent.exists() and not out.parent.is_dir():
        fail(f"--out {out}: {out.parent} is not a directory")
    path = write_prompts(out, seed)
    logging.getLogger(__name__).info("wrote %s", path)
