"""Converters from foreign formats: one module per format, each with `NAME`, `REQUIRED` (the
fields or columns a record needs: (role, accepted names)) and `read(path, ...)` yielding drafts
(or rejects) that `base.run_conversion` turns into shards."""
from __future__ import annotations

import os
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from nexus_gen.data.convert import captions, edit_pairs, imagepulse, llava, nexus_gen_jsonl
from nexus_gen.data.convert.base import BuildOptions, Item, Summary, run_conversion
from nexus_gen.data.records import expand_inputs, input_names, read_columns, read_records
from nexus_gen.data.shards import DEFAULT_SHARD_BYTES, MANIFEST, is_build_shard
from nexus_gen.data.templates import LANGUAGES

FORMATS = {m.NAME: m for m in (nexus_gen_jsonl, llava, edit_pairs, imagepulse, captions)}
PathLike = Union[str, Path]


def missing_roles(fmt: str, columns: Iterable[str]) -> list[str]:
    """The roles of format `fmt` that none of `columns` fills, as `role (one of a, b)`."""
    have = set(columns)
    return [f"{role} (one of {', '.join(names)})" if len(names) > 1 else repr(names[0])
            for role, names in FORMATS[fmt].REQUIRED if not have & set(names)]


def formats_for(columns: Iterable[str]) -> list[str]:
    """The formats whose every required role is among `columns` (a guess at what a file is)."""
    cols = list(columns)
    return [f for f in FORMATS if not missing_roles(f, cols)]


def _try(fmts: list[str], exclude: str) -> str:
    others = [f for f in fmts if f != exclude]
    if not others:
        return ""
    return f": is this a {others[0]} file? try `nexus-gen convert {others[0]} ...`" + (
        f" (or {', '.join(others[1:])})" if others[1:] else "")


def check_header(fmt: str, path: Path) -> None:
    """A table whose header (csv/tsv) or schema (parquet/arrow/dataset) lacks a column the
    format needs is a config error, found before any work: ValueError naming the file, the
    columns found and the ones expected. json/jsonl have no header and pass."""
    columns = read_columns(path)
    if columns is None:
        return
    missing = missing_roles(fmt, columns)
    if missing:
        shown = ", ".join(columns[:20]) + (f", ... ({len(columns)} in all)" if len(columns) > 20 else "")
        raise ValueError(f"input {path}: its columns are [{shown or 'none'}]; {fmt} needs "
                         f"{' and '.join(missing)}{_try(formats_for(columns), fmt)}")


def default_images_root(inputs: list[PathLike]) -> Path:
    """The deepest folder holding every input as named: a folder itself, a file's folder, the
    folders of a glob's matches."""
    dirs = []
    for raw in inputs:
        p = Path(raw)
        dirs += [p] if p.is_dir() else [m.parent for m in expand_inputs([raw])]
    return Path(os.path.commonpath([os.path.abspath(d) for d in dirs])).resolve()


def convert_files(fmt: str, inputs: Union[PathLike, Iterable[PathLike]], out_dir: PathLike,
                  images_root: Optional[PathLike] = None, source: Optional[str] = None,
                  language: Optional[str] = None, verify: str = "header",
                  shard_bytes: int = DEFAULT_SHARD_BYTES, workers: Optional[int] = None,
                  progress: bool = False) -> Summary:
    """Convert inputs of format `fmt` (files, folders, globs, saved `datasets` folders; see
    `records.expand_inputs`) into one build of shards + manifest + rejects under `out_dir`,
    read in order, one at a time. Options, every input's readability and every table's header
    are checked before any work. Images resolve under `images_root` (default: the deepest folder
    holding every input) and never outside it. Each input's samples default to its own source
    (`records.source_name`) and are located by `input_names`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths = expand_inputs(inputs)
    if shard_bytes <= 0:
        raise ValueError(f"shard size must be positive, got {shard_bytes}")
    try:  # a shell passes undecodable bytes as lone surrogates: every sample would be a reject
        (source or "").encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"--source {source!r} is not valid UTF-8 text") from None
    out_res = Path(out_dir).resolve()
    for p in paths:
        inp = p.resolve()
        if inp.parent == out_res and (is_build_shard(inp.name) or inp.name in (MANIFEST, "rejects.jsonl")):
            raise ValueError(f"input {p} is one of the files a build into {out_dir} replaces; "
                             "write to another --out folder")
    kwargs: dict[str, Any] = {"source": source}
    if fmt == "captions":
        kwargs["language"] = language or "en"
        if kwargs["language"] not in LANGUAGES:
            raise ValueError(f"--language {language!r}: choose one of {', '.join(LANGUAGES)}")
    elif language is not None:
        if fmt in ("edit-pairs", "imagepulse"):
            kwargs["language"] = language
        else:
            raise ValueError(f"--language applies to captions, edit-pairs and imagepulse, not {fmt}")
    opts = BuildOptions(Path(images_root) if images_root is not None else default_images_root(inputs), verify)
    names = input_names(paths)
    mod = FORMATS[fmt]
    for p in paths:  # unknown suffixes, unreadable tables and wrong headers stop here, before any work
        check_header(fmt, p)
        if not p.is_dir():
            read_records(p, "")  # raises for an unknown table format; reads nothing yet

    def items() -> Iterator[Item]:
        for p, name in zip(paths, names):
            yield from mod.read(p, name=name, **kwargs)

    extra = {"converted_from": {"format": fmt, "input": names[0], "inputs": names}}
    return run_conversion(items(), out_dir, opts, shard_bytes=shard_bytes, workers=workers,
                          manifest_extra=extra, progress=progress)


def convert_file(fmt: str, input_path: PathLike, out_dir: PathLike,
                 images_root: Optional[PathLike] = None, source: Optional[str] = None,
                 language: Optional[str] = None, verify: str = "header",
                 shard_bytes: int = DEFAULT_SHARD_BYTES, workers: Optional[int] = None,
                 progress: bool = False) -> Summary:
    """Convert one input file of format `fmt` into shards + manifest + rejects under `out_dir`.
    Options are checked before any work; images resolve under `images_root` (default: the
    input file's folder) and never outside it."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input {input_path} does not exist or is not a file")
    return convert_files(fmt, [input_path], out_dir, images_root=images_root, source=source,
                         language=language, verify=verify, shard_bytes=shard_bytes, workers=workers,
                         progress=progress)


def nothing_accepted(fmt: str, inputs: Union[PathLike, Iterable[PathLike]], summary: Summary) -> Optional[str]:
    """None when the build accepted a sample; else one line saying why nothing was, with the
    likely cause: an empty input, or (when every reject has the same reason) the format that
    fits the records' fields, guessed from the first records."""
    if summary.accepted:
        return None
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    shown = ", ".join(str(p) for p in inputs)
    if not summary.input:
        return f"nothing to convert: {shown} holds no record (an empty input)"
    line = f"nothing accepted: all {summary.rejected} record(s) of {shown} were rejected"
    if len(summary.reasons) == 1:
        kind = next(iter(summary.reasons))
        line += f", every one for the same reason ({summary.examples.get(kind, kind)})"
    keys: list[str] = []
    try:
        recs = chain.from_iterable(read_records(p) for p in expand_inputs(inputs))
        for rec in islice((r for r in recs if r.data is not None), 50):
            keys += [k for k in rec.data if k not in keys]
    except (OSError, ValueError):
        pass
    hint = _try(formats_for(keys), fmt)
    return line + (hint if hint else " (see rejects.jsonl for each record's reason)")
