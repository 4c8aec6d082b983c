"""Run records: what a run folder says about its run (status, name, progress, counts, rejects by
reason, duration, last error), read from the files the run wrote, for build, eval and train runs
alike. Pure reading: nothing here imports Prefect, the evals or the trainers; their folders are
read by format only.

Statuses:
- `complete`: the run finished everything it planned (a build: every shard of its recipe).
- `partial`: a build that finished what it was asked but not its whole recipe (`--limit`), or
  that stopped without an error.
- `failed`: the run recorded an error (`last_error`).
- `running`: a run.json saying `running` whose process (`pid`, `host` in it) is alive on this
  host, or, without a pid, whose folder changed within `STALE_AFTER_S` (a training run appends
  to metrics.jsonl and writes checkpoints as it goes; its progress is metrics.jsonl's last step).
- `unfinished`: started, with no final record (or the final record is older than later work):
  still running, or stopped (killed, crashed). Rerunning the same command resumes it.
- `damaged`: the record file is not readable JSON.

Which folder is which run:
- build: `run.json` without a `kind` key, or `recipe.json` (written first by `nexus-gen build`);
- eval: `config.json` with a `benchmark` key (geneval, geneval-scenes, editing, understanding);
- train and other kinds: `run.json` with a `kind` key: `{"kind", "status", "stage", "step",
  "max_steps", "seconds", "last_error", "counts"}`.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

RUN_FILE, RECIPE_FILE, CONFIG_FILE, SUMMARY_FILE = "run.json", "recipe.json", "config.json", "summary.json"
DONE_DIR, STAGING_DIR = ".done", ".staging"  # the build's shard markers and shards in flight
STATUSES = ("complete", "partial", "failed", "running", "unfinished", "damaged")
STALE_AFTER_S = 15 * 60  # a run.json saying "running" that has not changed for this long: unfinished
# Folders a run search never enters: a run's data, images and reports (they hold no runs).
SKIP_DIRS = frozenset({"data", "triplets", "rejects", "edited", "images", "samples", "report_files",
                       "gedit_scores", "__pycache__", "node_modules", "site-packages"})
MAX_DEPTH = 4


class NotARunError(ValueError):
    """The folder holds no run record this module knows."""


@dataclass
class RunRecord:
    """One run folder, summarised (see the module docstring for the statuses)."""

    dir: str
    kind: str  # build | eval | train | (another kind a run.json names)
    status: str
    name: str  # build: recipe; eval: benchmark[/task] and model; train: stage
    done: Optional[int] = None  # progress in `unit`s
    planned: Optional[int] = None
    unit: str = ""  # shards | prompts | items | steps
    counts: dict[str, int] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    duration_s: Optional[float] = None
    last_error: Optional[str] = None
    updated: Optional[float] = None  # newest change of the run's record files (epoch seconds)
    note: str = ""  # why this status, and what to do
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific: headline metrics, limit, ...

    @property
    def rejected(self) -> int:
        """Every reject, skip and unparsed item, whatever its reason."""
        return sum(self.rejects_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `nexus-gen runs ... --json` prints)."""
        return {**asdict(self), "rejected": self.rejected}


# -- reading files -------------------------------------------------------------------------------
class _Damaged(Exception):
    pass


def _json(path: Path) -> Optional[Any]:
    """A JSON file's content; None if it does not exist; _Damaged if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Damaged(f"{path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Damaged(f"{path} is not valid JSON ({exc})") from None


def _jsonl_ids(path: Path, key: str = "id") -> set:
    """Distinct `key` values of a JSON-lines file's readable lines (an unfinished last line is
    left out)."""
    ids: set = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    ids.add(json.loads(line).get(key))
                except (json.JSONDecodeError, AttributeError):
                    continue
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    ids.discard(None)
    return ids


def _count_lines(path: Path) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return None


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _updated(run: Path, names: tuple[str, ...]) -> Optional[float]:
    times = [t for t in (_mtime(run / n) for n in names) if t is not None]
    return max(times) / 1e9 if times else None


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _add(into: dict[str, int], other: dict[str, Any], prefix: str = "") -> None:
    for k, v in (other or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            into[prefix + str(k)] = into.get(prefix + str(k), 0) + int(v)


# -- build runs ----------------------------------------------------------------------------------
def _markers(run: Path) -> list[Path]:
    """Finished shards' markers (not one being written under its temporary name)."""
    try:
        return [p for p in (run / DONE_DIR).iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _in_flight(run: Path) -> list[str]:
    try:
        return sorted(p.name for p in (run / STAGING_DIR).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _build_record(run: Path) -> RunRecord:
    updated = _updated(run, (RUN_FILE, RECIPE_FILE, DONE_DIR, STAGING_DIR))
    try:
        record = _json(run / RUN_FILE)
        lock = _json(run / RECIPE_FILE) or {}
    except _Damaged as exc:
        return RunRecord(str(run), "build", "damaged", "?", updated=updated, last_error=str(exc),
                         note="the run record cannot be read; rerun the build command to rewrite it")
    name = (record or {}).get("recipe") or (lock.get("recipe") or {}).get("name") or "?"
    markers = _markers(run)
    run_time = _mtime(run / RUN_FILE)
    newer = [m for m in markers if (_mtime(m) or 0) > (run_time or 0)]
    in_flight = _in_flight(run)
    if record is not None and not newer and not (in_flight and (_mtime(run / STAGING_DIR) or 0) > run_time):
        return _finished_build(run, record, name, updated)
    # No final record, or one older than later work: an attempt started after it.
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for m in markers:
        try:
            c = (_json(m) or {}).get("counts", {})
        except _Damaged:
            continue
        _add(counts, {k: c.get(k, 0) for k in ("planned", "triplets", "rejected", "samples")})
        _add(reasons, c.get("reasons", {}))
    shards = (record or {}).get("shards", {})
    planned = shards.get("selected")
    what = (f"run.json ({record.get('status')}) is older than {len(newer)} finished shard(s)"
            if record is not None and newer else
            f"run.json ({record.get('status')}) is older than the shards in flight" if record is not None
            else "no run.json yet")
    flight = f"; in flight: {', '.join(in_flight[:4])}{' ...' if len(in_flight) > 4 else ''}" if in_flight else ""
    ago = f"; last change {_age(time.time() - updated)} ago" if updated else ""
    note = (f"unfinished: {what}, {len(markers)} shard(s) done{flight}{ago}. Still running, or "
            f"stopped: the same `nexus-gen build` command resumes it (finished shards are kept)")
    return RunRecord(str(run), "build", "unfinished", name, len(markers), planned, "shards", counts,
                     reasons, None, (record or {}).get("last_error"), updated, note,
                     {"recipe_hash": lock.get("recipe_hash") or (record or {}).get("recipe_hash")})


def _finished_build(run: Path, r: dict[str, Any], name: str, updated: Optional[float]) -> RunRecord:
    shards = r.get("shards", {})
    status = r.get("status", "?")
    limit = r.get("limit")
    note = ""
    if status == "complete" and limit is not None and shards.get("selected", 0) < shards.get("planned", 0):
        status = "partial"
        note = (f"--limit {limit}: {shards.get('done')} of the recipe's {shards.get('planned')} shards; "
                f"the same command without --limit goes on")
    elif status == "failed":
        note = "the build stopped with an error; finished shards are kept, the same command goes on"
    elif status == "partial":
        note = "the build stopped before every shard was done; the same command goes on"
    if status == "complete" and r.get("reconciled") is False:
        note = "counts do not reconcile: planned != triplets + rejected"
    seconds = r.get("seconds", {})
    duration = seconds.get("run") if isinstance(seconds, dict) else seconds
    details = {k: r[k] for k in ("recipe_hash", "limit", "reconciled", "by_edit_type", "by_task", "by_split")
               if k in r}
    details["shards_selected"] = shards.get("selected")
    return RunRecord(str(run), "build", status, name, shards.get("done"), shards.get("planned"), "shards",
                     dict(r.get("counts", {})), dict(r.get("rejects_by_reason", {})), duration,
                     r.get("last_error"), updated, note, details)


# -- runs that name their kind (train, ...) ------------------------------------------------------
def _newest_entry(run: Path) -> Optional[float]:
    """The newest change among a run folder's top-level entries (a training run appends to
    metrics.jsonl and writes checkpoints while its run.json still says step 0)."""
    times = []
    try:
        for e in os.scandir(run):
            try:
                times.append(e.stat(follow_symlinks=False).st_mtime_ns)
            except OSError:
                continue
    except OSError:
        return None
    return max(times) / 1e9 if times else None


def _last_step(run: Path) -> Optional[int]:
    """The step of the last complete line of metrics.jsonl (read from the end)."""
    try:
        with open(run / "metrics.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _kind_record(run: Path, r: dict[str, Any]) -> RunRecord:
    updated = _newest_entry(run)
    status = str(r.get("status", "?"))
    note = ""
    done, planned = r.get("step"), r.get("max_steps")
    if status == "running":
        logged = _last_step(run)
        if logged is not None and (done is None or logged > done):
            done = logged  # run.json is rewritten at the end; metrics.jsonl as it goes
        pid, host = r.get("pid"), r.get("host")
        if isinstance(pid, int) and host == socket.gethostname():
            if not _pid_alive(pid):
                status, note = "unfinished", f"run.json says running, but its process {pid} is gone"
        elif updated is not None and time.time() - updated > STALE_AFTER_S:
            status = "unfinished"
            note = (f"run.json says running but nothing in the run folder has changed for "
                    f"{_age(time.time() - updated)}: its process has likely stopped")
        if status == "unfinished":
            note += "; the same command resumes it from its last checkpoint"
    seconds = r.get("seconds")
    duration = seconds.get("run", seconds.get("total")) if isinstance(seconds, dict) else seconds
    counts: dict[str, int] = {}
    _add(counts, r.get("counts", {}))
    reasons = dict(r.get("rejects_by_reason") or (r.get("counts") or {}).get("skipped_by_reason") or {})
    unit = "steps" if done is not None or planned is not None else ""
    if "shards" in r and isinstance(r["shards"], dict):
        done, planned, unit = r["shards"].get("done"), r["shards"].get("planned"), "shards"
    name = str(r.get("stage") or r.get("name") or r.get("recipe") or "?")
    details = {k: r[k] for k in ("stage", "final_loss", "world_size", "global_batch", "precision", "device",
                                 "config_hash", "resumed_from", "metrics") if k in r}
    return RunRecord(str(run), str(r["kind"]), status, name, done, planned, unit, counts, reasons,
                     duration, r.get("last_error"), updated, note, details)


# -- eval runs ---------------------------------------------------------------------------------
def _eval_record(run: Path, config: dict[str, Any]) -> RunRecord:
    bench = str(config["benchmark"])
    updated = _updated(run, (CONFIG_FILE, SUMMARY_FILE, "predictions.jsonl", "scores.jsonl",
                             "detections.jsonl"))
    try:
        summary = _json(run / SUMMARY_FILE)
    except _Damaged as exc:
        return RunRecord(str(run), "eval", "damaged", bench, updated=updated, last_error=str(exc),
                         note="summary.json cannot be read; rerun the eval command to rewrite it")
    if summary is not None and (_mtime(run / SUMMARY_FILE) or 0) < (_mtime(run / CONFIG_FILE) or 0):
        summary = None  # an older run's summary: a rerun (e.g. a larger --limit) has started since
    if bench in ("geneval", "geneval-scenes"):
        rec = _geneval(run, config, summary)
    elif bench == "editing":
        rec = _editing(run, config, summary)
    elif bench == "understanding":
        rec = _understanding(run, config, summary)
    else:
        rec = RunRecord(str(run), "eval", "", bench)
    rec.updated = updated
    if summary is not None:
        rec.status = "complete"
    else:
        rec.status = "unfinished"
        ago = f"; last change {_age(time.time() - updated)} ago" if updated else ""
        rec.note = (f"unfinished: no summary.json{ago}. Still running, or stopped: the same "
                    f"command resumes it (finished work is kept)")
    return rec


def _geneval(run: Path, config: dict[str, Any], summary: Optional[dict[str, Any]]) -> RunRecord:
    n_images = int(config.get("n_images") or 1)
    prompts = config.get("prompt_set", {})
    done = 0
    for entry in os.scandir(run):
        if entry.is_dir() and entry.name.isdigit():
            try:
                pngs = [p for p in os.listdir(os.path.join(entry.path, "samples")) if p.endswith(".png")]
            except OSError:
                continue
            done += len(pngs) >= n_images
    gen = config.get("generator", {})
    name = f"{config['benchmark']} {gen.get('name', '?') if isinstance(gen, dict) else gen}"
    counts: dict[str, int] = {}
    details: dict[str, Any] = {"benchmark": config["benchmark"], "prompt_set": prompts.get("name"),
                               "limit": prompts.get("limit")}
    if summary:
        _add(counts, {k: summary[k] for k in ("n_prompts", "n_images") if k in summary})
        details["headline"] = {k: summary[k] for k in ("overall", "correct_images", "correct_prompts")
                               if k in summary}
    return RunRecord(str(run), "eval", "", name, done, prompts.get("n_used"), "prompts", counts,
                     details=details)


def _editing(run: Path, config: dict[str, Any], summary: Optional[dict[str, Any]]) -> RunRecord:
    name = f"editing {config.get('editor', '?')}"
    details: dict[str, Any] = {"benchmark": "editing", "data": config.get("data")}
    reasons: dict[str, int] = {}
    if summary:
        _add(reasons, summary.get("skipped_reasons", {}), "skipped: ")
        _add(reasons, summary.get("not_edited", {}), "not edited: ")
        _add(reasons, summary.get("score_errors", {}), "score error: ")
        counts = {k: summary[k] for k in ("planned", "items", "skipped", "edited", "kept", "scored")
                  if isinstance(summary.get(k), int)}
        details["headline"] = {k: v for k, v in (summary.get("overall") or {}).items()
                               if k in ("l1", "l2", "clip_i", "dino", "clip_t", "clip_dir", "success")}
        return RunRecord(str(run), "eval", "", name, summary.get("scored"), summary.get("items"), "items",
                         counts, reasons, details=details)
    edited = []
    try:
        with open(run / "items.jsonl", encoding="utf-8") as f:
            edited = [json.loads(line).get("edited") for line in f if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    done = sum(1 for e in edited if e and (run / e).is_file())
    skipped = _count_lines(run / "skipped.jsonl")
    counts = {"items": len(edited), "edited": done} | ({"skipped": skipped} if skipped is not None else {})
    return RunRecord(str(run), "eval", "", name, done, len(edited), "items edited", counts, reasons,
                     details=details)


def _understanding(run: Path, config: dict[str, Any], summary: Optional[dict[str, Any]]) -> RunRecord:
    name = f"understanding/{config.get('task', '?')} {config.get('model', '?')}"
    planned = _count_lines(run / "items.jsonl")
    done = len(_jsonl_ids(run / "predictions.jsonl"))
    counts: dict[str, int] = {"items": planned or 0, "predicted": done}
    reasons: dict[str, int] = {}
    details: dict[str, Any] = {"benchmark": "understanding", "task": config.get("task"),
                               "parser": config.get("parser"), "limit": config.get("limit")}
    if summary:
        _add(counts, summary.get("denominator", {}))
        _add(reasons, summary.get("unparsed_reasons", {}))
        details["headline"] = summary.get("headline")
        details["not_comparable"] = summary.get("not_comparable")
    return RunRecord(str(run), "eval", "", name, done, planned, "items", counts, reasons, details=details)


# -- entry points --------------------------------------------------------------------------------
def run_kind(path: Union[str, Path]) -> Optional[str]:
    """`build`, `eval`, another kind named by run.json, or None if the folder is no run (cheap:
    looks at file names and the small record files only)."""
    p = Path(path)
    if (p / RUN_FILE).is_file():
        try:
            r = _json(p / RUN_FILE)
        except _Damaged:
            return "build" if (p / RECIPE_FILE).is_file() else "unknown"
        return str(r["kind"]) if isinstance(r, dict) and r.get("kind") else "build"
    if (p / RECIPE_FILE).is_file():
        return "build"
    if (p / CONFIG_FILE).is_file():
        try:
            c = _json(p / CONFIG_FILE)
        except _Damaged:
            return None
        if isinstance(c, dict) and c.get("benchmark"):
            return "eval"
    return None


def read_run(path: Union[str, Path]) -> RunRecord:
    """The record of one run folder. Raises NotARunError (naming the folder and what a run folder
    holds) for a missing path, a file, or a folder with no run record."""
    p = Path(path)
    if not p.exists():
        raise NotARunError(f"{p} does not exist")
    if not p.is_dir():
        raise NotARunError(f"{p} is a file, not a run folder")
    kind = run_kind(p)
    if kind is None:
        raise NotARunError(
            f"{p} is not a run folder: it holds no run.json (build, train), recipe.json (a build "
            f"that has started) or config.json with a 'benchmark' key (an eval run); "
            f"`nexus-gen runs list {p}` finds the runs below it")
    if kind == "build":
        return _build_record(p)
    if kind == "eval":
        return _eval_record(p, _json(p / CONFIG_FILE))
    try:
        record = _json(p / RUN_FILE)
    except _Damaged as exc:
        return RunRecord(str(p), "unknown", "damaged", "?", updated=_updated(p, (RUN_FILE,)),
                         last_error=str(exc), note="run.json cannot be read")
    if not isinstance(record, dict):
        return RunRecord(str(p), "unknown", "damaged", "?", last_error=f"{p / RUN_FILE} is not a JSON object")
    return _kind_record(p, record)


def iter_run_dirs(root: Union[str, Path], max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Run folders at or below `root` (at most `max_depth` levels down), in name order. A run's own
    sub-folders, hidden folders and data folders (`SKIP_DIRS`) are not entered."""
    root = Path(root)
    if run_kind(root) is not None:
        yield root
        return
    if max_depth <= 0:
        return
    try:
        entries = sorted((e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    except (PermissionError, NotADirectoryError, FileNotFoundError):
        return
    for e in entries:
        if e.name.startswith(".") or e.name in SKIP_DIRS:
            continue
        yield from iter_run_dirs(Path(e.path), max_depth - 1)


def find_runs(root: Union[str, Path], max_depth: int = MAX_DEPTH) -> list[RunRecord]:
    """The records of every run folder at or below `root`. Raises NotARunError if `root` is not
    a folder."""
    root = Path(root)
    if not root.is_dir():
        raise NotARunError(f"{root} {'does not exist' if not root.exists() else 'is a file, not a folder'}")
    return [read_run(p) for p in iter_run_dirs(root, max_depth)]
