"""Reading foreign records one at a time with their location, so every bad one can be reported
as `file:line` and skipped without stopping the run: jsonl, json (an array is streamed), csv,
tsv, parquet, arrow and folders saved with `datasets`' `save_to_disk`. Also: turning the inputs
a user names (files, folders, globs) into the list of inputs to read."""
from __future__ import annotations

import csv
import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tsv", ".arrow")
CSV_FIELD_LIMIT = 256 * 1024 * 1024  # the csv module's default (128 kB) stops at one long caption


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based (jsonl/csv: the line the record starts on; json array/parquet/arrow/dataset: the item number)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Record:
    """One input record, or the reason it could not be read."""

    location: Location
    data: Optional[dict[str, Any]] = None
    error: Optional[str] = None


def read_jsonl_records(path: Union[str, Path], name: Optional[str] = None) -> Iterator[Record]:
    """Each line of a JSON Lines file as a Record, whatever the file's suffix (`read_records`
    picks the format by suffix). Blank lines are skipped; a BOM may open the file."""
    return _jsonl(Path(path), display_name(path) if name is None else name)


def _jsonl(path: Path, name: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            loc = Location(name, i)
            try:
                text = raw.decode("utf-8-sig" if i == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as e:
                yield Record(loc, error=f"line is not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield Record(loc, error=f"bad JSON: {e.msg} at column {e.colno}")
                continue
            except RecursionError:
                yield Record(loc, error="bad JSON: nested too deeply to read")
                continue
            if not isinstance(obj, dict):
                yield Record(loc, error=f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Record(loc, data=obj)


MAX_JSON_DEPTH = 900  # as deep as the json module goes before its RecursionError


def _first_byte(path: Path) -> tuple[bytes, int]:
    """The first non-blank byte of a file and where the text starts (after a UTF-8 BOM)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        start = 3 if head.startswith(b"\xef\xbb\xbf") else 0
        while True:
            stripped = head[start:].lstrip()
            if stripped or not head:
                return stripped[:1], start
            head = f.read(4096)
            start = 0


def _json(path: Path, name: str) -> Iterator[Record]:
    """A json file: an array is streamed item by item (memory does not grow with the file); a
    file whose first line is a whole object is JSON Lines under a .json name; anything else is
    one JSON value, read whole."""
    first, start = _first_byte(path)
    if first == b"[":
        yield from _json_array(path, name, start)
        return
    if first == b"{":
        with open(path, "rb") as f:
            line = f.readline()
        try:
            json.loads(line.decode("utf-8-sig"))
            yield from _jsonl(path, name)
            return
        except (ValueError, RecursionError):
            pass  # one object over several lines
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        yield Record(Location(name, 1), error="bad JSON file: nested too deeply to read")
        return
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield Record(Location(name, getattr(e, "lineno", 0) or 0), error=f"bad JSON file: {e}")
        return
    if not isinstance(obj, dict):
        yield Record(Location(name, 1), error=f"expected a JSON array of objects, got {type(obj).__name__}")
        return
    yield Record(Location(name, 1), data=obj)


def _json_array(path: Path, name: str, start: int) -> Iterator[Record]:
    """Items of a JSON array, each built from the parser's events as soon as it ends. Located by
    item number; an item nested deeper than MAX_JSON_DEPTH is a reject (its events are skipped);
    a syntax error ends the file with one reject naming the item it stopped in."""
    import ijson

    i = 0
    at = 1  # the item a syntax error would stop in
    with open(path, "rb") as f:
        f.seek(start)
        events = ijson.basic_parse(f, use_float=True)
        try:
            next(events)  # start_array
            for event, value in events:
                if event == "end_array":
                    for _ in events:  # whatever follows the array is an error (ijson raises)
                        pass
                    return
                i = at
                builder: Optional[ijson.ObjectBuilder] = ijson.ObjectBuilder()
                builder.event(event, value)
                depth = 1 if event in ("start_map", "start_array") else 0
                while depth:
                    event, value = next(events)
                    if event in ("start_map", "start_array"):
                        depth += 1
                    elif event in ("end_map", "end_array"):
                        depth -= 1
                    if builder is not None:
                        if depth > MAX_JSON_DEPTH:
                            builder = None
                        else:
                            builder.event(event, value)
                loc = Location(name, i)
                if builder is None:
                    yield Record(loc, error="bad JSON: nested too deeply to read")
                elif isinstance(builder.value, dict):
                    yield Record(loc, data=builder.value)
                else:
                    yield Record(loc, error=f"item {i} is a {type(builder.value).__name__}, not an object")
                at = i + 1
        except (ijson.JSONError, StopIteration) as e:
            reason = "the file ends inside the array" if isinstance(e, StopIteration) else str(e).splitlines()[0]
            yield Record(Location(name, at), error=f"bad JSON file: {reason} (item {at}; nothing after it is read)")


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _csv(path: Path, name: str, delimiter: str, header_only: bool = False) -> Iterator[Record]:
    """Rows as records keyed by the header (with `header_only`: one record holding the header,
    each column mapped to None)."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    # undecodable bytes become lone surrogates, so one bad row is rejected and the rest are read
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header: Optional[list[str]] = None
        start = 1  # a record is located by the line it starts on (quoted newlines span lines)
        try:
            for cells in reader:
                loc = Location(name, start)
                start = reader.line_num + 1
                if not cells:  # a blank line
                    continue
                if header is None:
                    header = cells
                    if header_only:
                        yield Record(loc, data=dict.fromkeys(header))
                        return
                    continue
                if len(cells) > len(header):
                    yield Record(loc, error=f"row has {len(cells)} cells, header has {len(header)}")
                    continue
                row = dict(zip(header, cells + [None] * (len(header) - len(cells))))
                bad = [k for k, v in row.items() if _not_utf8(str(k)) or (isinstance(v, str) and _not_utf8(v))]
                if bad:
                    yield Record(loc, error=f"column {bad[0]!r} is not valid UTF-8 text "
                                            "(save the file as UTF-8)")
                    continue
                yield Record(loc, data={k: (v if v != "" else None) for k, v in row.items()})
        except (csv.Error, UnicodeDecodeError) as e:
            yield Record(Location(name, start), error=f"unreadable CSV: {e}")


def open_parquet(path: Union[str, Path]):
    """The file opened now, so an unreadable parquet fails before any work (not mid-run)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"input {path} is not a readable parquet file ({type(e).__name__}: {e})") from None


def _parquet(pf, name: str) -> Iterator[Record]:
    i = 0
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            i += 1
            yield Record(Location(name, i), data=row)


def _open_arrow(src) -> tuple[Any, Iterator[Any]]:
    """(schema, record batches) of an Arrow IPC source: stream format, as `datasets` writes, or
    file format."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(src)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid:
        src.seek(0)
        f = pa.ipc.open_file(src)
        return f.schema, (f.get_batch(k) for k in range(f.num_record_batches))


def _arrow(path: Path, name: str) -> Iterator[Record]:
    """Rows of an Arrow IPC file, in small slices (memory-mapped: nothing is read ahead)."""
    import pyarrow as pa

    i = 0
    with pa.memory_map(str(path)) as src:
        for batch in _open_arrow(src)[1]:
            for start in range(0, batch.num_rows, 64):
                for row in batch.slice(start, 64).to_pylist():
                    i += 1
                    yield Record(Location(name, i), data=row)


def _check_arrow(path: Path) -> list[str]:
    """The column names of an Arrow IPC file; ValueError naming it when it is not one."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            return list(_open_arrow(src)[0].names)
    except Exception as e:
        raise ValueError(f"input {path} is not a readable Arrow file ({type(e).__name__}: {e})") from None


def is_saved_dataset(path: Union[str, Path]) -> bool:
    """True for a folder written by `datasets`' `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()
                           or (p / "dataset_dict.json").is_file())


def _load_saved(path: Path) -> list[tuple[Optional[str], Any]]:
    """(split or None, Dataset) of a saved dataset folder, memory-mapped (nothing is copied)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise ValueError(f"input {path} is not a readable `datasets` folder ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        return list(ds.items())
    return [(None, ds)]


def _saved_dataset(parts: list[tuple[Optional[str], Any]], name: str) -> Iterator[Record]:
    """Rows of a saved dataset (every split in order, located as `NAME/SPLIT:row`) as stored:
    images stay `{bytes, path}` structs, nothing is decoded."""
    for split, ds in parts:
        where = name if split is None else f"{name}/{split}"
        i = 0
        for table in ds.with_format("arrow").iter(batch_size=64):
            for row in table.to_pylist():
                i += 1
                yield Record(Location(where, i), data=row)


def display_name(path: Union[str, Path]) -> str:
    """A file's name as valid UTF-8 text (undecodable bytes of a foreign file name become U+FFFD),
    so it can stand in rejects, meta and manifests."""
    return os.fsencode(Path(path).name).decode("utf-8", "replace")


# a shard number at the end of a name: train-00000-of-00002, part_001, data-00003
_SHARD_NUMBER = re.compile(r"(?:[-_.](?:\d+-of-\d+|\d{3,}))+$")
# names that say nothing of where the data comes from: the folder above names the source
GENERIC_NAMES = frozenset({"", "train", "test", "validation", "valid", "val", "dev", "data", "part", "shard",
                           "shards", "default", "split", "all", "metadata"})


def source_name(path: Union[str, Path]) -> str:
    """The default source of an input's samples, as valid UTF-8 text: the file's name without
    its suffix and shard number (`coco.jsonl` -> coco, `MagicBrush/data/train-00000-of-00002.parquet`
    -> MagicBrush: a split or shard name says nothing, so the nearest telling folder name is used);
    a saved dataset's folder name (or its parent's, for a split folder)."""
    p = Path(os.path.abspath(path))
    first = display_name(p) if is_saved_dataset(p) else Path(display_name(p)).stem
    candidates = [first] + [display_name(a) for a in list(p.parents)[:3]]
    for name in candidates:
        stem = _SHARD_NUMBER.sub("", name)
        if stem.lower() not in GENERIC_NAMES:
            return stem
    return Path(display_name(p)).stem


def input_names(paths: list[Path]) -> list[str]:
    """How each input is named in locations and meta: its file name, or, when two inputs share
    a name, its path below the inputs' common folder (valid UTF-8 text either way)."""
    names = [display_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    return [os.fsencode(os.path.relpath(os.path.abspath(p), common)).decode("utf-8", "replace")
            .replace(os.sep, "/") for p in paths]


def _table_files(folder: Path) -> list[Path]:
    """Inputs in a folder, walked in name order: table files and saved datasets (read as one
    input each); hidden files and folders are skipped."""
    out: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out += [entry] if is_saved_dataset(entry) else _table_files(entry)
        elif entry.is_file() and entry.suffix.lower() in TABLE_SUFFIXES:
            out.append(entry)
    return out


def expand_inputs(inputs: Union[str, Path, Iterable[Union[str, Path]]]) -> list[Path]:
    """The inputs named by files, folders (their table files, recursively, or a saved `datasets`
    folder) and globs (`data/*.parquet`, `**` for any depth), in the order given (each folder
    and glob in name order), each once. ValueError / FileNotFoundError when a name matches nothing."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file() or is_saved_dataset(p):
            found = [p]
        elif p.is_dir():
            found = _table_files(p)
            if not found:
                raise ValueError(f"input folder {p} holds no table file ({', '.join(TABLE_SUFFIXES)}) "
                                 "and no folder saved with `datasets`")
        elif glob.has_magic(str(raw)):
            found = []
            for m in sorted(glob.glob(str(raw), recursive=True)):
                mp = Path(m)
                if mp.is_file() and mp.suffix.lower() in TABLE_SUFFIXES or is_saved_dataset(mp):
                    found.append(mp)
                elif mp.is_dir():
                    found += _table_files(mp)
            if not found:
                raise ValueError(f"no input matches {raw} (table files: {', '.join(TABLE_SUFFIXES)})")
        else:
            raise FileNotFoundError(f"input {p} does not exist")
        out += found
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def read_columns(path: Union[str, Path]) -> Optional[list[str]]:
    """The columns an input declares before its rows (a csv/tsv header, a parquet, arrow or
    dataset schema), or None for json/jsonl, whose records each have their own keys. Opens the
    input, so an unreadable one fails here (ValueError naming it), before any work."""
    path = Path(path)
    if is_saved_dataset(path):
        cols: list[str] = []
        for _, ds in _load_saved(path):
            cols += [c for c in ds.column_names if c not in cols]
        return cols
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(open_parquet(path).schema_arrow.names)
    if suffix == ".arrow":
        return _check_arrow(path)
    if suffix in (".csv", ".tsv"):
        for rec in _csv(path, display_name(path), "," if suffix == ".csv" else "\t", header_only=True):
            return list(rec.data) if rec.data is not None else None
    return None  # json/jsonl, or a csv without even a header: an empty input


def read_records(path: Union[str, Path], name: Optional[str] = None) -> Iterator[Record]:
    """Records of a jsonl / json / csv / tsv / parquet / arrow file or a saved `datasets` folder,
    lazily, each with its location (`name`: how the input is named there; default its file name)."""
    path = Path(path)
    name = display_name(path) if name is None else name
    if is_saved_dataset(path):
        return _saved_dataset(_load_saved(path), name)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path, name)
    if suffix == ".json":
        return _json(path, name)
    if suffix == ".csv":
        return _csv(path, name, ",")
    if suffix == ".tsv":
        return _csv(path, name, "\t")
    if suffix == ".parquet":
        return _parquet(open_parquet(path), name)
    if suffix == ".arrow":
        _check_arrow(path)
        return _arrow(path, name)
    raise ValueError(f"input {path}: unknown table format {suffix!r}; use one of {TABLE_SUFFIXES}")
