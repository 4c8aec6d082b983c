"""Source images that are not plain files: rows of a streamed `datasets` dataset and images a
text-to-image pipeline generates from prompts. Planning fingerprints them (a row: xxh3-128 of its
image bytes; a generated image: of its prompt, seed, model id and settings, without generating);
execution reads them back (`read_source_image`), each model and dataset once per process."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import xxhash
from PIL import Image, ImageOps

if TYPE_CHECKING:  # the backends import this module: theirs is imported where used
    from nexus_gen.edit.backends.base import SourceRef

SIDE_MULTIPLE = 16  # diffusers pipelines take sides divisible by their VAE (x packing) factor
_DATA_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
_ROWS: dict[tuple, list[tuple[Optional[bytes], Optional[str], Optional[str]]]] = {}
_GENERATED: dict[str, Image.Image] = {}
_LOCK = threading.Lock()


def fit_source(img: Image.Image, size: int, aspect: str = "square") -> Image.Image:
    """`square`: centre-cropped to size x size. `keep`: the longer side scaled to `size`, the other
    in proportion, both rounded to multiples of 16 (a centre crop takes the rounding)."""
    if aspect == "square":
        return ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    w, h = img.size
    s = size / max(w, h)
    tw = max(SIDE_MULTIPLE, int(round(w * s / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    th = max(SIDE_MULTIPLE, int(round(h * s / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    return ImageOps.fit(img, (tw, th), Image.Resampling.BICUBIC)


# -- streamed datasets
def _open_stream(path: str, split: str):
    import datasets

    p = Path(path).expanduser()
    if p.is_file():
        builder = _DATA_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise ValueError(f"{p}: not a data file ({', '.join(_DATA_BUILDERS)})")
        return datasets.load_dataset(builder, data_files=str(p), split="train", streaming=True)
    return datasets.load_dataset(str(p) if p.exists() else path, split=split, streaming=True)


def stream_rows(path: str, split: str, column: str, caption_column: Optional[str],
                count: int) -> list[tuple[Optional[bytes], Optional[str], Optional[str]]]:
    """The first `count` rows as (image bytes, caption, error), read once per process. The image
    column is read undecoded (`datasets.Image(decode=False)`): the bytes are fingerprinted as they
    are stored."""
    key = (path, split, column, caption_column, count)
    with _LOCK:
        if key in _ROWS:
            return _ROWS[key]
    import datasets

    ds = _open_stream(path, split)
    names = ds.column_names or list(next(iter(ds)).keys())
    for c in (column, caption_column):
        if c is not None and c not in names:
            raise ValueError(f"no column {c!r} (columns: {', '.join(names)})")
    ds = ds.cast_column(column, datasets.Image(decode=False))
    rows: list[tuple[Optional[bytes], Optional[str], Optional[str]]] = []
    for i, row in enumerate(ds):
        if i >= count:
            break
        v, err = row.get(column), None
        data = v.get("bytes") if isinstance(v, dict) else None
        if data is None and isinstance(v, dict) and v.get("path"):
            try:
                data = Path(v["path"]).read_bytes()
            except OSError as exc:
                err = f"row {i}: image {v['path']}: {exc.strerror or exc}"
        elif data is None:
            err = f"row {i}: no image in column {column!r}"
        cap = row.get(caption_column) if caption_column else None
        rows.append((data, str(cap) if cap is not None else None, err))
    with _LOCK:
        _ROWS[key] = rows
    return rows


def dataset_sources(src: Any, name: str, base: Path) -> list[SourceRef]:
    """The plan's sources of one `hf_dataset` recipe source (its first `count` rows)."""
    from nexus_gen.edit.backends.base import SourceRef
    from nexus_gen.edit.recipe import RecipeError

    p = Path(src.path).expanduser()
    path = str(p if p.is_absolute() or not (base / p).exists() else (base / p).resolve())
    try:
        rows = stream_rows(path, src.split, src.image_column, src.caption_column, src.count)
    except Exception as exc:
        raise RecipeError(f"source {name!r}: dataset {src.path!r} (split {src.split!r}) cannot be "
                          f"read: {type(exc).__name__}: {exc}") from None
    out = []
    for i, (data, caption, error) in enumerate(rows):
        key = xxhash.xxh3_128_hexdigest(data) if data is not None else \
            "unreadable-" + xxhash.xxh3_128_hexdigest(f"{path}:{src.split}:{i}".encode())
        ref = {"path": path, "split": src.split, "column": src.image_column,
               "caption_column": src.caption_column, "count": src.count, "row": i}
        out.append(SourceRef("image", key, name, src.size, caption=caption, error=error,
                             aspect=src.aspect, dataset=ref))
    return out


# -- generated images
def prompts_of(src: Any, base: Path) -> list[str]:
    """The source's prompts: its list, then its file's non-empty lines."""
    prompts = list(src.prompts)
    if src.prompts_file:
        p = Path(src.prompts_file).expanduser()
        p = p if p.is_absolute() else base / p
        prompts += [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    return prompts


def generated_sources(recipe: Any, src: Any, name: str, base: Path) -> list[SourceRef]:
    """The plan's sources of one `text2image` recipe source: one per prompt and seed,
    fingerprinted from what decides the image (nothing is generated here)."""
    from nexus_gen.edit.backends.base import SourceRef
    from nexus_gen.edit.backends.imagepulse_models import model_id_of
    from nexus_gen.edit.plan import derive_seed

    model = model_id_of("generator", src.model)
    out = []
    for j, prompt in enumerate(prompts_of(src, base)):
        for k in range(src.images_per_prompt):
            gen = {"prompt": prompt, "seed": derive_seed(recipe.seed, "text2image", name, j, k),
                   "model": model, "spec": src.model, "size": src.size, "steps": src.steps,
                   "guidance": src.guidance, "dtype": src.dtype}
            key = xxhash.xxh3_128_hexdigest(json.dumps({k2: gen[k2] for k2 in (
                "prompt", "seed", "model", "size", "steps", "guidance")}, sort_keys=True).encode())
            out.append(SourceRef("image", key, name, src.size, caption=prompt, generated=gen))
    return out


def _generate(gen: dict[str, Any], device: str) -> Image.Image:
    import torch

    from nexus_gen.edit.backends import imagepulse_models as im

    r = im.resolve("generator", gen["spec"])
    pipe = im.load_generator(r, device, gen["dtype"])
    kwargs: dict[str, Any] = dict(prompt=gen["prompt"], height=gen["size"], width=gen["size"],
                                  num_inference_steps=gen["steps"], output_type="pil",
                                  generator=torch.Generator("cpu").manual_seed(gen["seed"]))
    if gen["guidance"] is not None:
        kwargs["guidance_scale"] = gen["guidance"]
    with torch.inference_mode():
        return pipe(**kwargs).images[0].convert("RGB")


def read_source_image(src: SourceRef, device: str = "cpu") -> Image.Image:
    """A plan source's image at its own size, RGB: a file or a dataset row through the safe
    decoder, or generated (once per process). Anything unreadable is an `EditError`."""
    from nexus_gen.edit.backends.base import EditError
    from nexus_gen.edit.backends.scenes import read_photo

    if src.error:
        raise EditError(src.error)
    if src.path is not None:
        return read_photo(src.path)
    if src.dataset is not None:
        from nexus_gen.data.images import decode_image

        d = src.dataset
        data = stream_rows(d["path"], d["split"], d["column"], d["caption_column"], d["count"])[d["row"]][0]
        try:
            return decode_image(data, f"{d['path']}[{d['row']}]")
        except Exception as exc:
            raise EditError(f"dataset {d['path']} row {d['row']}: {exc}") from None
    if src.generated is not None:
        with _LOCK:
            img = _GENERATED.get(src.key)
        if img is None:
            try:
                img = _generate(src.generated, device)
            except Exception as exc:
                raise EditError(f"generator {src.generated['model']} failed on prompt "
                                f"{src.generated['prompt']!r}: {type(exc).__name__}: {exc}") from None
            with _LOCK:
                if len(_GENERATED) >= 64:  # a shard's sources; older ones are done
                    _GENERATED.pop(next(iter(_GENERATED)))
                _GENERATED[src.key] = img
        return img.copy()
    raise EditError(f"source {src.key} has no image (no path, dataset row or prompt)")


def check_source_models(recipe: Any) -> list[str]:
    """Problems with the generators of `text2image` sources, found without loading weights."""
    from nexus_gen.edit.backends import imagepulse_models as im

    problems = []
    for i, s in enumerate(recipe.sources):
        if s.kind == "text2image":
            r = im.resolve("generator", s.model)
            why = im.check(r)
            if why:
                shown = r.spec if r.spec == r.source else f"{r.spec} -> {r.source}"
                problems.append(f"sources.{i}.model: {shown!r} cannot be loaded: {why}")
    return problems
