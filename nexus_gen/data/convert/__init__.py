"""Converters from foreign formats: one module per format, each with `NAME` and `read(path, ...)`
yielding drafts (or rejects) that `base.run_conversion` turns into shards."""
from __future__ import annotations

from nexus_gen.data.convert import captions, edit_pairs, imagepulse, llava, nexus_gen_jsonl

FORMATS = {m.NAME: m for m in (nexus_gen_jsonl, llava, edit_pairs, imagepulse, captions)}

from pathlib import Path
from typing import Optional, Union

from nexus_gen.data.convert.base import BuildOptions, Summary, run_conversion
from nexus_gen.data.records import display_name
from nexus_gen.data.shards import DEFAULT_SHARD_BYTES, MANIFEST, is_build_shard


def convert_file(fmt: str, input_path: Union[str, Path], out_dir: Union[str, Path],
                 images_root: Optional[Union[str, Path]] = None, source: Optional[str] = None,
                 language: Optional[str] = None, verify: str = "header",
                 shard_bytes: int = DEFAULT_SHARD_BYTES, workers: Optional[int] = None,
                 progress: bool = False) -> Summary:
    """Convert one input file of format `fmt` into shards + manifest + rejects under `out_dir`.
    Options are checked before any work; images resolve under `images_root` (default: the
    input file's folder) and never outside it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input {input_path} does not exist or is not a file")
    if shard_bytes <= 0:
        raise ValueError(f"shard size must be positive, got {shard_bytes}")
    try:  # a shell passes undecodable bytes as lone surrogates: every sample would be a reject
        (source or "").encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"--source {source!r} is not valid UTF-8 text") from None
    inp = input_path.resolve()
    if inp.parent == Path(out_dir).resolve() and (is_build_shard(inp.name) or inp.name in (MANIFEST, "rejects.jsonl")):
        raise ValueError(f"input {input_path} is one of the files a build into {out_dir} replaces; "
                         "write to another --out folder")
    opts = BuildOptions(Path(images_root) if images_root is not None else input_path.parent.resolve(), verify)
    mod = FORMATS[fmt]
    kwargs = {"source": source}
    if fmt == "captions":
        kwargs["language"] = language or "en"
    elif language is not None:
        if fmt in ("edit-pairs", "imagepulse"):
            kwargs["language"] = language
        else:
            raise ValueError(f"--language applies to captions, edit-pairs and imagepulse, not {fmt}")
    items = mod.read(input_path, **kwargs)
    extra = {"converted_from": {"format": fmt, "input": display_name(input_path)}}
    return run_conversion(items, out_dir, opts, shard_bytes=shard_bytes, workers=workers,
                          manifest_extra=extra, progress=progress)
