"""What every converter shares: drafts of samples with image references, turning a draft into a
checked sample (images read, checked, hashed), and the run that streams drafts into shards while
every failure becomes a rejects row. Counts always reconcile: input = accepted + rejected."""
from __future__ import annotations

import hashlib
import re
import json
import logging
import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO, Union

import xxhash

from nexus_gen.data.images import (DEFAULT_MAX_PIXELS, ImageError, ImagesRoot, canonical_image_bytes,
                                   image_to_bytes)
from nexus_gen.data.records import Location, Record
from nexus_gen.data.shards import DEFAULT_SHARD_BYTES, ShardWriter, meta_json
from nexus_gen.data.templates import detect_language, detect_task
from nexus_gen.data.validate import sample_problems
from nexus_gen.parallel import ordered_map

log = logging.getLogger(__name__)
VERIFY_MODES = ("header", "full")
IMAGE_HASH_KEY = "image_xxh3_128"


class DraftError(ValueError):
    """A record that cannot become a sample, with the reason."""


@dataclass
class Draft:
    """A sample before its images are read: `images` holds references (paths, HF structs, bytes)."""

    location: Location
    id: Any
    source: str
    messages: list[dict[str, Any]]
    images: list[Any]
    task: Optional[str] = None
    language: Optional[str] = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reject:
    location: Location
    reason: str
    id: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.location.file, "line": self.location.line, "id": self.id, "reason": self.reason}


Item = Union[Draft, Reject]


def content_key(*parts: Any, n: int = 16) -> str:
    """A short stable hash of the given parts (ids that depend only on content)."""
    h = hashlib.sha1(json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()[:n]


def require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """A field that must be present with the given type, else a `DraftError` naming it."""
    if key not in data or data[key] is None:
        raise DraftError(f"missing field {key!r}{what}")
    v = data[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DraftError(f"field {key!r} should be {names}, got {type(v).__name__}")
    return v


def optional_id(value: Any, column: str) -> Optional[str]:
    """An optional id column as text: a string or an integer (not a boolean, float or object)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DraftError(f"column {column!r} should be a string or an integer id, got "
                         f"{type(value).__name__} {value!r}")
    return str(value)


def parse_turns(data: dict[str, Any], field: str, role_key: str, content_key: str,
                roles: Optional[dict[str, str]] = None) -> list[dict[str, str]]:
    """A record's list of turns as `{role, content}` messages. `roles` maps foreign role names
    (e.g. LLaVA's human/gpt); without it roles are kept as they are (validation checks them)."""
    turns = require(data, field, list)
    if not turns:
        raise DraftError(f"field {field!r} is empty; a sample needs a user and an assistant turn")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise DraftError(f"{field}[{i}] should be an object, got {type(t).__name__}")
        role, content = t.get(role_key), t.get(content_key)
        if roles is not None:
            if role not in roles:
                raise DraftError(f"{field}[{i}]: unknown role {role_key!r}: {role!r} "
                                 f"(expected one of {', '.join(roles)})")
            role = roles[role]
        elif not isinstance(role, str):
            raise DraftError(f"{field}[{i}]: missing or non-string {role_key!r}")
        if not isinstance(content, str):
            raise DraftError(f"{field}[{i}] ({role}): {content_key!r} should be a string, "
                             f"got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def drafts_from_records(records: Iterable[Record], make: Callable[[Record], list[Draft]]) -> Iterator[Item]:
    """Turn records into drafts with `make`; unreadable records and `DraftError`s become rejects."""
    for rec in records:
        if rec.error is not None:
            yield Reject(rec.location, rec.error)
            continue
        try:
            drafts = make(rec)
        except Exception as e:  # a record no converter foresaw is a reject, never the end of the run
            reason = str(e) if isinstance(e, DraftError) else f"unexpected record ({type(e).__name__}: {e})"
            rid = rec.data.get("id") if isinstance(rec.data, dict) else None
            yield Reject(rec.location, reason, str(rid) if rid is not None else None)
            continue
        yield from drafts


@dataclass(frozen=True)
class BuildOptions:
    images_root: Optional[Path]
    verify: str = "header"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify={self.verify!r}: choose one of {VERIFY_MODES}")
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.images_root is not None and not Path(self.images_root).is_dir():
            raise ValueError(f"images root {self.images_root} is not a directory")

    @property
    def root(self) -> Optional[ImagesRoot]:
        """The confined reader of the images root (built once per options object)."""
        if self.images_root is None:
            return None
        cached = self.__dict__.get("_root")
        if cached is None:
            cached = ImagesRoot(self.images_root)
            object.__setattr__(self, "_root", cached)
        return cached


def build_sample(draft: Draft, opts: BuildOptions) -> dict[str, Any]:
    """Read, check and hash the draft's images, fill task/language, validate. Raises DraftError.

    Each image's content hash (xxh3-128, non-cryptographic) goes to
    `meta.image_xxh3_128`: an identity for dedup and joins at 20 GB/s. Integrity is the
    manifest's job: its sha256 of each shard covers every image byte."""
    if isinstance(draft.id, int) and not isinstance(draft.id, bool):
        draft.id = str(draft.id)
    images = []
    hashes = []
    for i, ref in enumerate(draft.images):
        name = ref if isinstance(ref, str) else f"image {i}"
        try:
            raw, path = image_to_bytes(ref, name, opts.root)
            data, _ = canonical_image_bytes(raw, name if isinstance(name, str) else str(name),
                                            opts.max_pixels, full=opts.verify == "full")
        except ImageError as e:
            raise DraftError(str(e)) from None
        except OSError as e:
            raise DraftError(f"image {name!r}: {e}") from None
        except Exception as e:  # odd files make PIL raise anything; a bad image must not stop the run
            raise DraftError(f"image {name!r} could not be read ({type(e).__name__}: {e})") from None
        images.append({"bytes": data, "path": path})
        hashes.append(xxhash.xxh3_128_hexdigest(data))
    messages = draft.messages
    sample = {
        "id": draft.id,
        "source": draft.source,
        "task": draft.task,
        "language": draft.language,
        "messages": messages,
        "images": images,
        "meta": {**draft.meta, IMAGE_HASH_KEY: hashes,
                 "input": {"file": draft.location.file, "line": draft.location.line}},
    }
    if isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                          and "role" in m for m in messages):
        if sample["task"] is None:
            sample["task"] = detect_task(messages)
        if sample["language"] is None:
            sample["language"] = detect_language(messages)
    problems = sample_problems(sample)
    if problems:
        raise DraftError("; ".join(problems))
    try:  # meta is stored as JSON text; a value JSON cannot hold would stop the writer
        meta_json(sample["meta"])
    except (TypeError, ValueError) as e:
        raise DraftError(f"meta: a value cannot be stored as JSON ({e})") from None
    return sample


class InlineExecutor(Executor):
    """Runs each task at once, in the calling thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:
            fut.set_exception(e)
        return fut


def convert_workers(verify: str) -> int:
    """Image workers when none are asked for. `full` decodes pixels (native code that releases
    the GIL): one thread per core. Header checks of local files are short Python steps between
    syscalls: extra threads only contend for the GIL, so they run in the caller's thread while
    the shard writer's threads write and hash (measured fastest, bench/shards.py)."""
    return max(2, os.cpu_count() or 1) if verify == "full" else 1


@dataclass
class Summary:
    input: int = 0
    accepted: int = 0
    rejected: int = 0
    by_task: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # the first full reason of each kind
    shards: int = 0
    bytes: int = 0

    def counts(self) -> dict[str, int]:
        return {"input": self.input, "accepted": self.accepted, "rejected": self.rejected}


def reason_kind(reason: str) -> str:
    """A reason with its specifics blanked, to count rejects by kind."""
    kind = re.sub(r"'[^']*'|\"[^\"]*\"|(?<=\s)/\S+|\b\d+\b", "…", reason.split(";")[0])
    return kind[:80]


@contextmanager
def _replaced_on_success(path: Path) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed to `path` when the block ends
    without an exception: a failed run leaves neither a half file nor the previous run's."""
    path.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def run_conversion(items: Iterable[Item], out_dir: Union[str, Path], opts: BuildOptions,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, workers: Optional[int] = None,
                   manifest_extra: Optional[dict[str, Any]] = None,
                   progress: bool = False) -> Summary:
    """Stream drafts into shards under `out_dir`; rejects go to `out_dir/rejects.jsonl`.

    Image reading and checking run in `workers` threads (1: in this thread; None: see
    `convert_workers`), bounded ahead of the writer; writing, id de-duplication and counting
    happen in order, so output bytes are deterministic."""
    workers = convert_workers(opts.verify) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission: an option error, not a traceback
        raise ValueError(f"output folder {out_dir} cannot be created ({e.strerror or e})") from None
    summary = Summary()
    seen: set[str] = set()

    def work(item: Item) -> Union[dict, Reject]:
        if isinstance(item, Reject):
            return item
        try:
            return build_sample(item, opts)
        except Exception as e:  # DraftError, or anything a record no one foresaw provokes
            reason = str(e) if isinstance(e, DraftError) else f"unexpected sample ({type(e).__name__}: {e})"
            rid = item.id if isinstance(item.id, str) else (None if item.id is None else str(item.id))
            return Reject(item.location, reason, rid)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="sample", desc="convert")
    pool = InlineExecutor() if workers == 1 else ThreadPoolExecutor(workers, thread_name_prefix="convert")
    with ShardWriter(out_dir, shard_bytes=shard_bytes, extra_manifest=manifest_extra) as writer:
        # rejects.jsonl is in place before the manifest, which is written last: a folder with
        # a manifest is a finished build, its counts reconcile
        with _replaced_on_success(out_dir / "rejects.jsonl") as rej, pool:
            for res in ordered_map(work, items, pool, ahead=max(4, 2 * workers), chunk=8):
                summary.input += 1
                if isinstance(res, dict) and res["id"] in seen:
                    where = res["meta"]["input"]
                    res = Reject(Location(where["file"], where["line"]),
                                 f"duplicate id {res['id']!r}: an earlier sample of this build has it",
                                 res["id"])
                if isinstance(res, Reject):
                    summary.rejected += 1
                    k = reason_kind(res.reason)
                    summary.reasons[k] = summary.reasons.get(k, 0) + 1
                    summary.examples.setdefault(k, res.reason)
                    line = json.dumps(res.to_json(), ensure_ascii=False)
                    try:
                        line.encode("utf-8")
                    except UnicodeEncodeError:  # an id with a lone surrogate: keep it, \u-escaped
                        line = json.dumps(res.to_json())
                    rej.write(line + "\n")
                    log.warning("rejected %s: %s", res.location, res.reason)
                else:
                    seen.add(res["id"])
                    writer.write(res)
                    summary.accepted += 1
                    for d, k in ((summary.by_task, res["task"]), (summary.by_language, res["language"]),
                                 (summary.by_source, res["source"])):
                        d[k] = d.get(k, 0) + 1
                if bar is not None:
                    bar.update(1)
        manifest = writer.close()
    if bar is not None:
        bar.close()
    summary.shards = len(manifest["shards"])
    summary.bytes = manifest["total_bytes"]
    return summary
