"""Where edit items come from, and how `--data` picks the reader.

- `scenes`: random scenes edits made on the fly (add / remove / style), with the exact target,
  the mask of pixels allowed to change and the added / removed object (exact success).
- a build run (`nexus-gen build ... -o RUN`): its held-out `test` split of unified editing
  samples (both directions, one language), with each triplet's mask from `RUN/triplets`.
- unified shards (any folder of nexus-gen parquet shards, e.g. converted MagicBrush /
  InstructPix2Pix tables from `nexus-gen convert edit-pairs`): every editing sample.
- MagicBrush (`img_id, turn_index, source_img, mask_img, instruction, target_img`) and Emu Edit
  (`instruction, image, task, split, idx, hash, input_caption, output_caption`; no target image)
  tables as published; GEdit-Bench and ImgEdit-Bench (`gedit`, `imgedit`).
A table missing a column is an error naming it; a row that cannot be used (missing image,
duplicate id, empty instruction) is skipped and counted with its reason."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from eval.editing.edit_items import (BenchmarkError, EditItem, Loaded, file_name, image_present,
                                     read_table, require_columns, table_files)

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("auto", "scenes", "build", "shards", "magicbrush", "emu-edit", "gedit",
                            "imgedit")
MAGICBRUSH_COLUMNS = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")
EMU_EDIT_COLUMNS = ("instruction", "image", "task", "split", "idx", "hash", "input_caption",
                    "output_caption")
SCENES_LIMIT = 30  # scenes edits when no --limit is given
EDITED_DIR = "edited"


def _edited(item_id: str) -> str:
    return f"{EDITED_DIR}/{file_name(item_id)}.png"


def scenes_items(n: int, size: int = 256, seed: int = 0) -> Loaded:
    """`n` scenes edits (`random_edit(seed + i)`), each with its exact target, mask and, for add /
    remove, the object the pixel detector must find (or no longer find) inside the mask."""
    from nexus_gen.scenes.edits import random_edit

    out = Loaded("scenes", [], source=f"scenes (seed {seed}, {size} px)")
    for i in range(n):
        item_id = f"scene-{i:05d}"
        try:
            res = random_edit(seed + i, size)
        except ValueError as e:
            out.skip(item_id, f"no edit: {e}")
            continue
        out.items.append(EditItem(
            id=item_id, instruction=res.instruction, source=res.source, target=res.target,
            edit_type=res.edit_type, source_caption=res.source_caption,
            target_caption=res.target_caption, mask=res.mask, edited_path=_edited(item_id),
            extra={"object": res.meta.get("object"), "style": res.style, "seed": seed + i}))
    return out


def _instruction(sample: dict[str, Any]) -> Optional[str]:
    text = (sample.get("meta") or {}).get("instruction")
    if not text:
        users = [m.get("content", "") for m in sample.get("messages") or [] if m.get("role") == "user"]
        text = users[0].replace("<image>", "").strip() if users else None
    return text or None


def _unique_rows(rows: list[dict[str, Any]], out: Loaded,
                 id_fields: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A published table's rows with their id (`id_fields` values joined by `-`); a repeated id
    is skipped, counted in `out`."""
    seen: set[str] = set()
    for r in rows:
        rid = "-".join(str(r.get(f)) for f in id_fields)
        if rid in seen:
            out.skip(rid, f"duplicate id ({', '.join(id_fields)})")
            continue
        seen.add(rid)
        yield rid, r


def _table_instruction(row: dict[str, Any]) -> Optional[str]:
    """A published row's instruction, or None when it is missing or blank."""
    text = row.get("instruction")
    return text if isinstance(text, str) and text.strip() else None


def shard_items(path: Path, language: Optional[str] = "en", split: Optional[str] = None,
                masks: Optional[dict[str, bytes]] = None, kind: str = "shards") -> Loaded:
    """Editing samples of unified shards (`images[0]` source, `images[1]` target,
    `meta.captions`, `meta.edit_type`; a reverse-direction sample's type gets `-reverse`) in
    `language` (None: all), from the shards of `split`
    (file names `<split>-NNNNN.parquet`; None: all). `masks`: triplet id -> mask PNG bytes."""
    from nexus_gen.data.shards import iter_samples, shard_files

    files = [f for f in shard_files(path) if split is None or f.name.startswith(f"{split}-")]
    if not files:
        raise BenchmarkError(f"{path} holds no {split + ' ' if split else ''}shards; pass a build "
                             "run, a folder of nexus-gen shards or a benchmark table")
    out = Loaded(kind, [], source=str(path))
    seen: set[str] = set()
    for s in iter_samples(files):
        if s.get("task") != "editing" or (language is not None and s.get("language") != language):
            continue
        sid, meta = str(s.get("id")), s.get("meta") or {}
        if sid in seen:
            out.skip(sid, "duplicate id")
            continue
        seen.add(sid)
        images = s.get("images") or []
        if len(images) < 2 or image_present(images[0]) is None or image_present(images[1]) is None:
            out.skip(sid, "missing source or target image")
            continue
        instruction = _instruction(s)
        if instruction is None:
            out.skip(sid, "empty instruction")
            continue
        caps = list(meta.get("captions") or []) + [None, None]
        edit_type = meta.get("edit_type") or "edit"
        if meta.get("direction") == "reverse":  # a triplet's edit type names its forward edit
            edit_type = f"{edit_type}-reverse"
        mask = None
        if masks is not None and meta.get("triplet_id") in masks:
            from nexus_gen.scoring.pixels import mask_array
            from nexus_gen.scoring.image_inputs import load_rgb

            size = load_rgb(images[0]).size
            mask = mask_array(masks[meta["triplet_id"]], size)
        out.items.append(EditItem(
            id=sid, instruction=instruction, source=images[0], target=images[1],
            edit_type=edit_type, source_caption=caps[0], target_caption=caps[1],
            mask=mask, language=s.get("language") or "en", edited_path=_edited(sid),
            extra={"triplet_id": meta.get("triplet_id"), "direction": meta.get("direction")}))
    return out


def build_run_items(run: Path, language: Optional[str] = "en") -> Loaded:
    """The held-out `test` split of a build run (`RUN/data/test-*.parquet`), masks from the
    triplet table (`RUN/triplets/test-*.parquet`)."""
    import pyarrow.parquet as pq

    masks: dict[str, bytes] = {}
    for f in sorted((run / "triplets").glob("test-*.parquet")):
        for r in pq.read_table(f, columns=["id", "mask"]).to_pylist():
            if r["mask"] and r["mask"].get("bytes"):
                masks[r["id"]] = r["mask"]["bytes"]
    return shard_items(run / "data", language=language, split="test", masks=masks, kind="build")


def magicbrush_items(path: Path) -> Loaded:
    """A MagicBrush table as published (`osunlp/MagicBrush`: train / dev parquet): id
    `img_id-turn_index`, edit type `turn-N` (MagicBrush reports single- and multi-turn edits)."""
    rows, columns = read_table(path)
    require_columns(columns, MAGICBRUSH_COLUMNS, "MagicBrush", path)
    out = Loaded("magicbrush", [], source=str(path))
    for rid, r in _unique_rows(rows, out, ("img_id", "turn_index")):
        src, tgt = image_present(r.get("source_img"), path.parent), image_present(r.get("target_img"), path.parent)
        if src is None or tgt is None:
            out.skip(rid, "missing source_img" if src is None else "missing target_img")
            continue
        instruction = _table_instruction(r)
        if instruction is None:
            out.skip(rid, "empty instruction")
            continue
        out.items.append(EditItem(id=rid, instruction=instruction, source=src, target=tgt,
                                  edit_type=f"turn-{r.get('turn_index')}", edited_path=_edited(rid),
                                  extra={"img_id": r.get("img_id"), "turn_index": r.get("turn_index")}))
    return out


def emu_edit_items(path: Path) -> Loaded:
    """An Emu Edit table as published (`facebook/emu_edit_test_set`): no target image, so the
    scores are Emu Edit's (CLIP-I, DINO and L1 against the source, CLIP-T against
    `output_caption`, directional CLIP); id `split-idx`, edit type `task`."""
    rows, columns = read_table(path)
    require_columns(columns, EMU_EDIT_COLUMNS, "Emu Edit", path)
    out = Loaded("emu-edit", [], source=str(path))
    for rid, r in _unique_rows(rows, out, ("split", "idx")):
        src = image_present(r.get("image"), path.parent)
        if src is None:
            out.skip(rid, "missing image")
            continue
        instruction = _table_instruction(r)
        if instruction is None:
            out.skip(rid, "empty instruction")
            continue
        out.items.append(EditItem(
            id=rid, instruction=instruction, source=src, edit_type=str(r.get("task") or "edit"),
            source_caption=r.get("input_caption") or None, target_caption=r.get("output_caption") or None,
            edited_path=_edited(rid), extra={"hash": r.get("hash")}))
    return out


def table_columns(path: Path) -> list[str]:
    """Column names of a table (schema only for parquet / arrow; the first row of json / jsonl)."""
    f = table_files(path)
    if not f:
        return []
    f0 = f[0]
    if f0.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(f0).names)
    if f0.suffix == ".arrow":
        import pyarrow as pa

        with pa.memory_map(str(f0)) as src:
            try:
                return list(pa.ipc.open_stream(src).schema.names)
            except pa.ArrowInvalid:
                return list(pa.ipc.open_file(src).schema.names)
    text = f0.read_text(encoding="utf-8")
    if f0.suffix == ".jsonl":
        first = next((ln for ln in text.splitlines() if ln.strip()), "{}")
        row = json.loads(first)
    else:
        data = json.loads(text)
        row = data[0] if isinstance(data, list) and data else data
    return list(row) if isinstance(row, dict) else []


def detect_format(data: str) -> str:
    """The reader for `--data`: `scenes`, a build run (has `run.json` and `data/`), ImgEdit's
    `basic_edit.json`, unified shards, or a table recognised by its columns."""
    if data == "scenes":
        return "scenes"
    p = Path(data)
    if not p.exists():
        raise BenchmarkError(f"--data {data}: no such file or folder; pass `scenes`, a build run, "
                             "shards or a benchmark table")
    if p.is_dir() and (p / "run.json").is_file() and (p / "data").is_dir():
        return "build"
    if p.name == "basic_edit.json" or (p.is_dir() and (p / "basic_edit.json").is_file()):
        return "imgedit"
    try:
        cols = set(table_columns(p))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"--data {data}: cannot read its columns ({e})") from e
    if {"messages", "images", "task"} <= cols:
        return "shards"
    if cols & {"task_type", "instruction_language", "Intersection_exist"}:
        return "gedit"
    if cols & {"img_id", "turn_index", "source_img", "target_img"}:
        return "magicbrush"
    if cols & {"input_caption", "output_caption"}:
        return "emu-edit"
    if p.suffix == ".json" and not isinstance(json.loads(p.read_text(encoding="utf-8")), list):
        return "imgedit"
    raise BenchmarkError(
        f"--data {data}: not a recognised benchmark (columns: {', '.join(sorted(cols)) or 'none'}); "
        f"pass --format, one of {', '.join(FORMATS[1:])}")


def load_items(data: str, fmt: str = "auto", *, model: str = "model", language: Optional[str] = None,
               images_root: Optional[Path] = None, limit: Optional[int] = None, size: int = 256,
               seed: int = 0) -> Loaded:
    """Read `--data` with the reader of `fmt` (`auto`: detected) and keep the first `limit` items
    (scenes: make `limit` edits, default `SCENES_LIMIT`)."""
    from eval.editing.gedit import read_gedit
    from eval.editing.imgedit import read_imgedit

    if fmt not in FORMATS:
        raise BenchmarkError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "scenes":
        return scenes_items(limit if limit is not None else SCENES_LIMIT, size=size, seed=seed)
    p = Path(data)
    if not p.exists():
        raise BenchmarkError(f"--data {data}: no such file or folder")
    lang = language or "en"
    loaded = {
        "build": lambda: build_run_items(p, language=lang),
        "shards": lambda: shard_items(p, language=lang),
        "magicbrush": lambda: magicbrush_items(p),
        "emu-edit": lambda: emu_edit_items(p),
        "gedit": lambda: read_gedit(p, model, language),
        "imgedit": lambda: read_imgedit(p, images_root, EDITED_DIR),
    }[fmt]()
    if limit is not None:
        loaded.items = loaded.items[:limit]
    return loaded
