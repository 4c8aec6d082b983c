"""Publish a finished build run to a dataset hub: check, stage, validate, then upload.

    record = publish_run(RUN, PublishOptions(repo_id="org/name", hub="hf"))

1. Checks before any work: the repo id, the hub, the run (finished, complete, every planned
   shard), the token (Hugging Face: `HF_TOKEN` or `huggingface_hub`'s stored login; ModelScope:
   `MODELSCOPE_API_TOKEN` or its client's login; a folder needs none).
   A filtered publish (`policy`, or a `nexus-gen select` folder as the input; `publish_source`)
   checks the policy, or that the selection's source run is the one it was made from.
2. Stage the hub layout (`hub_layout`) and the card (`dataset_card`) into
   `RUN/publish/<target>/staged/` (built aside and swapped in: the same run gives the same bytes).
   With `policy`, the run is first selected into `RUN/publish/<target>/selection/` (`nexus-gen
   select`'s code and bytes), which is then staged as a select folder would be. A rerun whose
   inputs, options and code are unchanged reuses `staged/` (`staging_reuse`).
3. Load every config from the staged folder with `datasets`, offline (`staged_check`); a
   filtered publish's rows must equal its selection.json's counts.
4. List the remote with its hashes; upload only missing or changed files, in commits of at most
   `commit_files` files / `commit_bytes` bytes (data first, the card last, with the removal of
   files of ours the new layout no longer has). Transient failures (connection, 408/429/5xx) are
   retried with exponential backoff; before a retry the remote is listed again, so a commit that
   landed but whose answer was lost is not made twice. An interrupted publish resumes: the next
   run uploads only what is still missing.
5. `RUN/publish/<target>/publish.json` records the target, the files and what was uploaded;
   its status is `complete` only after the last commit succeeded (`uploading`, `failed`,
   `dry-run` otherwise). No timestamps: a second publish of an unchanged run rewrites it
   with `uploaded: []`.

The token is never logged, written or put in an error message (`redact`)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from nexus_gen.data.shards import write_json_atomic
from nexus_gen.hub import staging_reuse
from nexus_gen.hub.dataset_card import build_card
from nexus_gen.hub.hub_layout import (CARD_FILE, DEFAULT_MAX_SHARD_BYTES, MANAGED_DIRS, TRIPLETS_CONFIG, LayoutError,
                                      reset_dir, stage_layout)
from nexus_gen.hub.publish_source import (PublishSource, check_counts, kept_triplet_ids, read_selection,
                                          resolve_source)
from nexus_gen.hub.hub_targets import (TMP_SUFFIX, DirTarget, HfTarget, LocalFile, ModelScopeTarget, PublishError,
                                       RemoteFile, Target, is_transient, local_file, redact)
from nexus_gen.hub.staged_check import StagedCheckError, check_staged

log = logging.getLogger(__name__)

PUBLISH_DIR = "publish"
RECORD_FILE = "publish.json"
HUBS = ("hf", "modelscope", "dir:PATH")
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
MAX_NAME = 96  # the Hub's limit for a repo name (and here for a namespace)


@dataclass
class PublishOptions:
    repo_id: str
    hub: str = "hf"  # hf | modelscope | dir:PATH (a folder or an fsspec URL)
    private: bool = False
    dry_run: bool = False
    endpoint: Optional[str] = None  # Hugging Face endpoint (default: HF_ENDPOINT or the public Hub)
    license: Optional[str] = None  # the card's licence, overriding what the sources imply
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    commit_files: int = 50
    commit_bytes: int = 1_000_000_000
    retries: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    policy: Optional[str] = None  # filter the run first: a policy name, a YAML file, or `auto`


@dataclass
class Plan:
    files: list[LocalFile]
    upload: list[LocalFile]
    unchanged: list[str]
    delete: list[str]
    batches: list[tuple[list[LocalFile], list[str]]] = field(default_factory=list)


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` with the Hub's characters (letters, digits, `_ . -`; not starting or ending
    with `.` or `-`, no `--` or `..`, at most 96 characters each). Raises PublishError."""
    parts = (repo_id or "").split("/")
    problem = None
    if len(parts) != 2 or not all(parts):
        problem = "it must be ORG/NAME (a namespace, one slash, a name)"
    elif any(len(p) > MAX_NAME for p in parts):
        problem = f"each part must be at most {MAX_NAME} characters"
    elif not all(_PART.fullmatch(p) for p in parts):
        problem = "use letters, digits, '_', '.' and '-' only, not at the start or end of a part"
    elif any(s in repo_id for s in ("--", "..")) or repo_id.endswith(".git"):
        problem = "'--', '..' and a '.git' ending are not allowed"
    if problem:
        raise PublishError(f"--repo-id {repo_id!r} is not a valid repository id: {problem}")
    return repo_id


def parse_hub(hub: str) -> tuple[str, Optional[str]]:
    """(`hf`|`modelscope`|`dir`, the folder or URL of `dir:`). Raises PublishError."""
    if hub in ("hf", "modelscope"):
        return hub, None
    if hub.startswith("dir:") and hub[4:].strip():
        return "dir", hub[4:].strip()
    raise PublishError(f"--hub {hub!r} is not a hub: use hf, modelscope or dir:PATH (a folder or an fsspec URL)")


def check_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run record and the stored recipe of a finished, complete build with every planned
    shard; PublishError naming what is missing otherwise."""
    if not run_dir.is_dir():
        raise PublishError(f"{run_dir} is not a build run: no such folder; give the --out folder of a "
                           "finished `nexus-gen build`")
    docs = []
    for name in ("run.json", "recipe.json"):
        p = run_dir / name
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PublishError(f"{run_dir} is not a build run ({name} missing); give the --out folder of a "
                               "finished `nexus-gen build`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PublishError(f"{p} is damaged ({exc}); rebuild the run") from None
        if not isinstance(doc, dict):
            raise PublishError(f"{p} is not a {name[:-5]} record; rebuild the run")
        docs.append(doc)
    record, stored = docs
    status, shards = record.get("status"), record.get("shards") or {}
    if status == "failed":
        raise PublishError(f"{run_dir} is a failed build (last error: {record.get('last_error')}); rerun the same "
                           "`nexus-gen build` to finish it, then publish")
    if status != "complete":
        raise PublishError(f"{run_dir} is an unfinished build (status {status!r}, {shards.get('done')} of "
                           f"{shards.get('planned')} shards); rerun the same `nexus-gen build` to finish it")
    if not shards.get("planned") or shards.get("done") != shards.get("planned"):
        raise PublishError(f"{run_dir} holds {shards.get('done')} of {shards.get('planned')} planned shards "
                           f"(built with --limit {record.get('limit')}); build the rest (the same command "
                           "without --limit), then publish")
    if record.get("reconciled") is False:
        raise PublishError(f"{run_dir}: its counts do not reconcile (planned != triplets + rejected): some inputs "
                           "are neither a sample nor a reject; rerun the same `nexus-gen build`, then publish")
    if not record.get("counts", {}).get("samples"):
        raise PublishError(f"{run_dir} has no samples: nothing to publish")
    return record, stored


def resolve_token(kind: str) -> Optional[str]:
    """The token of a hub kind from the environment or its client's stored login (None for
    `dir`). Raises PublishError for a hub that needs one and has none."""
    if kind == "hf":
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
        if not token:
            raise PublishError("no Hugging Face token: set HF_TOKEN or run `huggingface-cli login` (the token "
                               "needs write access to the namespace of --repo-id)")
        return token
    if kind == "modelscope":
        return os.environ.get("MODELSCOPE_API_TOKEN") or None  # else the client's own login
    return None


def make_target(kind: str, location: Optional[str], opts: PublishOptions, token: Optional[str]) -> Target:
    """The target object for a parsed --hub."""
    if kind == "hf":
        return HfTarget(opts.repo_id, token or "", endpoint=opts.endpoint, private=opts.private)
    if kind == "modelscope":
        return ModelScopeTarget(opts.repo_id, token, private=opts.private)
    return DirTarget(location or "", opts.repo_id)


def target_slug(kind: str, repo_id: str) -> str:
    """The folder name of a target's staging and record under RUN/publish/."""
    return f"{kind}--{repo_id.replace('/', '--')}"


class _RedactFilter(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.secret in msg:
            record.msg, record.args = redact(msg, self.secret), None
        if record.exc_info and record.exc_info[1] is not None and self.secret in str(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        return True


@contextlib.contextmanager
def redacting_logs(secret: Optional[str]) -> Iterator[None]:
    """Every handler of the root logger drops the secret from what it emits, while in scope."""
    if not secret:
        yield
        return
    filt = _RedactFilter(secret)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


def stage(run_dir: Path, work: Path, opts: PublishOptions,
          selection_dir: Optional[Path] = None) -> tuple[Path, dict[str, Any]]:
    """Stage layout and card into `work/staged` (built in `work/.staged.tmp`, validated, then
    swapped in); returns the staged folder and config -> split -> rows as loaded. With
    `selection_dir` (a `nexus-gen select` output of the run): its samples and the triplet rows
    of its triplets, checked against its selection.json."""
    tmp, staged = work / ".staged.tmp", work / "staged"
    reset_dir(tmp)
    selection = read_selection(selection_dir) if selection_dir is not None else None
    kept = kept_triplet_ids(selection_dir) if selection_dir is not None else None
    try:
        configs = stage_layout(run_dir, tmp, max_shard_bytes=opts.max_shard_bytes, data_dir=selection_dir,
                               triplet_ids=kept)
    except LayoutError as exc:
        raise PublishError(str(exc)) from None
    if not configs:
        raise PublishError(f"{selection_dir or run_dir}: no rows in any config; nothing to publish")
    card_trips = None
    if selection is not None:  # the figures and model ids of the kept triplet rows
        card_trips = work / ".card-triplets"
        reset_dir(card_trips)
        if TRIPLETS_CONFIG in configs:
            shards = [{"file": str((tmp / f).resolve())} for fs in configs[TRIPLETS_CONFIG].files.values() for f in fs]
            (card_trips / "manifest.json").write_text(json.dumps({"shards": shards}), encoding="utf-8")
    try:
        card = build_card(run_dir, configs, opts.repo_id, opts.license, selection, card_trips)
    finally:
        if card_trips is not None:
            shutil.rmtree(card_trips, ignore_errors=True)
    (tmp / CARD_FILE).write_text(card.text, encoding="utf-8")
    for rel, data in card.assets.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    cache = work / ".datasets-cache"
    try:
        loaded = check_staged(tmp, configs, cache)
    except StagedCheckError as exc:
        raise PublishError(f"the staged folder does not load, nothing was uploaded: {exc}") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if selection is not None:
        check_counts(loaded, selection, kept or set())
    if staged.exists():
        shutil.rmtree(staged)
    os.replace(tmp, staged)
    return staged, loaded


def staged_files(staged: Path) -> list[LocalFile]:
    """Every file to publish, hashed: data first (sorted), the card last."""
    files = sorted((p for p in staged.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (p.name == CARD_FILE and p.parent == staged, p.relative_to(staged).as_posix()))
    return [local_file(staged, p) for p in files]


def _ours(path: str) -> bool:
    """A remote file a publish owns: the card, a file under a config or assets folder, or a
    dir target's leftover temporary file."""
    top = path.split("/", 1)[0]
    return path == CARD_FILE or (top in MANAGED_DIRS and "/" in path) or path.endswith(TMP_SUFFIX)


def plan_upload(files: list[LocalFile], remote: dict[str, RemoteFile], opts: PublishOptions) -> Plan:
    """What to upload (missing or changed), what is unchanged, what to delete, and the commits."""
    upload = [f for f in files if not (f.path in remote and remote[f.path].same_as(f))]
    unchanged = [f.path for f in files if f not in upload]
    local = {f.path for f in files}
    delete = sorted(p for p in remote if p not in local and _ours(p))
    plan = Plan(files, upload, unchanged, delete)
    data = [f for f in upload if f.path != CARD_FILE]
    card = [f for f in upload if f.path == CARD_FILE]
    batch: list[LocalFile] = []
    size = 0
    for f in data:
        if batch and (len(batch) >= opts.commit_files or size + f.size > opts.commit_bytes):
            plan.batches.append((batch, []))
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        plan.batches.append((batch, []))
    if card or delete:  # the card (and the removal of what it no longer names) comes last
        plan.batches.append((card, delete))
    return plan


def _oneline(exc: BaseException, secret: Optional[str]) -> str:
    """`Type: message` on one line (HTTP errors span several), without a trailing period."""
    return redact(" ".join(f"{type(exc).__name__}: {exc}".split()).rstrip("."), secret)


def _retrying(call: Callable[[], Any], what: str, opts: PublishOptions, secret: Optional[str],
              sleep: Callable[[float], None]) -> Any:
    for attempt in range(opts.retries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt >= opts.retries or not is_transient(exc):
                raise
            delay = min(opts.retry_max_seconds, opts.retry_base_seconds * 2 ** attempt)
            log.warning("%s failed (%s); retry %d of %d in %.1f s", what, _oneline(exc, secret),
                        attempt + 1, opts.retries, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def _commit_batch(target: Target, adds: list[LocalFile], deletes: list[str], message: str, what: str,
                  opts: PublishOptions, secret: Optional[str], sleep: Callable[[float], None]) -> Optional[str]:
    """One commit, retried on transient errors. A retry first lists the remote again and sends
    only what is still missing (the last try may have landed and lost its answer); None when
    nothing was left to send."""
    tries = 0

    def attempt() -> Optional[str]:
        nonlocal tries
        tries += 1
        todo, gone = adds, deletes
        if tries > 1:
            now = target.list_files()
            todo = [f for f in adds if not (f.path in now and now[f.path].same_as(f))]
            gone = [d for d in deletes if d in now]
            if not todo and not gone:
                return None
        return target.commit(todo, gone, message)

    return _retrying(attempt, what, opts, secret, sleep)


def _record(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, rec, sort_keys=True)


def publish_run(run_dir: Union[str, Path], opts: PublishOptions,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Publish `run_dir` as `opts` say (see module doc); returns the publish record. Raises
    PublishError (with the token redacted) when it cannot start or does not finish."""
    run = Path(run_dir)
    check_repo_id(opts.repo_id)
    kind, location = parse_hub(opts.hub)
    for name, v in (("--commit-files", opts.commit_files), ("--commit-bytes", opts.commit_bytes),
                    ("--max-shard-size", opts.max_shard_bytes)):
        if v < 1:
            raise PublishError(f"{name} must be positive, got {v}")
    src, run_record = resolve_source(run, opts.policy, check_run)
    token = resolve_token(kind)
    with redacting_logs(token):
        try:
            return _publish(src, opts, kind, location, run_record, token, sleep)
        except PublishError as exc:
            raise PublishError(redact(exc, token)) from None
        except Exception as exc:
            raise PublishError(_oneline(exc, token)) from None


def _staging_fingerprint(src: PublishSource, opts: PublishOptions) -> str:
    """The fingerprint of everything the staged bytes are made from (see staging_reuse)."""
    from nexus_gen.scoring.policy import FILTERS_DIR

    inputs = {"run": staging_reuse.folder_digests(src.run), "data": staging_reuse.folder_digests(src.run / "data"),
              "triplets": staging_reuse.folder_digests(src.run / "triplets")}
    if src.selection_dir is not None:
        inputs = {**inputs, "selection": staging_reuse.folder_digests(src.selection_dir)}
    policy = None
    if src.policy is not None:
        from nexus_gen.hub.publish_source import resolve_policy

        stored = json.loads((src.run / "recipe.json").read_text(encoding="utf-8"))
        policy = {"given": src.policy, "resolved": repr(resolve_policy(src.policy, stored)),
                  "built_in": staging_reuse.folder_digests(FILTERS_DIR)}
    return staging_reuse.fingerprint(inputs, {"repo_id": opts.repo_id, "license": opts.license,
                                              "max_shard_bytes": opts.max_shard_bytes, "policy": policy})


def _previous_files(rec_path: Path) -> Optional[dict[str, str]]:
    """path -> sha256 of the staged files the previous publish record lists (None if none)."""
    try:
        prev = json.loads(rec_path.read_text(encoding="utf-8"))
        return {p: f["sha256"] for p, f in (prev.get("files") or {}).items()} or None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _stage_or_reuse(src: PublishSource, work: Path, opts: PublishOptions, fp: str,
                    previous: Optional[dict[str, str]], run_record: dict[str, Any]) -> tuple[Path, dict[str, Any], bool]:
    """`work/staged` as reused (unchanged inputs) or staged afresh (a --policy selects first)."""
    doc = staging_reuse.reusable(work, fp, previous)
    if doc is not None:
        log.info("inputs, options and code unchanged: reusing %s", work / "staged")
        return work / "staged", doc["configs"], True
    staging_reuse.forget(work)
    sel_dir = src.selection_dir
    if src.policy is not None:
        from nexus_gen.edit.select import SelectError, write_selection

        sel_dir = work / "selection"
        stored = json.loads((src.run / "recipe.json").read_text(encoding="utf-8"))
        try:
            write_selection(src.run, run_record, stored, src.policy, sel_dir)
        except SelectError as exc:
            raise PublishError(f"--policy {src.policy!r}: {exc}") from None
    staged, loaded = stage(src.run, work, opts, sel_dir)
    staging_reuse.save(work, fp, {"configs": loaded})
    return staged, loaded, False


def _publish(src: PublishSource, opts: PublishOptions, kind: str, location: Optional[str],
             run_record: dict[str, Any], token: Optional[str], sleep: Callable[[float], None]) -> dict[str, Any]:
    target = make_target(kind, location, opts, token)
    _retrying(target.check_access, f"checking access to {target.label}", opts, token, sleep)
    run = src.run
    work = run / PUBLISH_DIR / target_slug(kind, opts.repo_id)
    rec_path = work / RECORD_FILE
    previous = _previous_files(rec_path)
    rec: dict[str, Any] = {"target": target.label, "location": target.location, "repo_id": opts.repo_id,
                           "hub": kind, "private": opts.private, "run": str(run.resolve()),
                           "recipe": run_record.get("recipe"), "recipe_hash": run_record.get("recipe_hash"),
                           "policy": opts.policy, "selection": str(src.selection_dir.resolve())
                           if src.selection_dir is not None else None,
                           "status": "staging", "commits": [], "uploaded": [], "deleted": [], "error": None}
    _record(rec_path, rec)
    try:
        staged, loaded, reused = _stage_or_reuse(src, work, opts, _staging_fingerprint(src, opts), previous,
                                                 run_record)
        rec["staging"] = "reused" if reused else "staged"
        files = staged_files(staged)
        rec.update(configs=loaded, staged=str(staged),
                   files={f.path: {"bytes": f.size, "sha256": f.sha256} for f in files})
        remote = _retrying(target.list_files, f"listing {target.label}", opts, token, sleep)
        plan = plan_upload(files, remote, opts)
        rec.update(unchanged=plan.unchanged, to_upload=[f.path for f in plan.upload], to_delete=plan.delete,
                   planned_commits=len(plan.batches))
        if opts.dry_run:
            rec["status"] = "dry-run"
            _record(rec_path, rec)
            return rec
        rec["status"] = "uploading"
        _record(rec_path, rec)
        if plan.batches:
            _retrying(target.ensure_repo, f"creating {target.label}", opts, token, sleep)
        for i, (adds, deletes) in enumerate(plan.batches, 1):
            what = f"commit {i}/{len(plan.batches)} to {target.label}"
            message = f"nexus-gen publish {run_record.get('recipe')} ({i}/{len(plan.batches)})"
            commit = _commit_batch(target, adds, deletes, message, what, opts, token, sleep)
            if commit:
                rec["commits"].append(commit)
            rec["uploaded"] += [f.path for f in adds]
            rec["deleted"] += deletes
            _record(rec_path, rec)
            log.info("commit %d/%d to %s: %d file(s), %d removed", i, len(plan.batches), target.label,
                     len(adds), len(deletes))
        rec["status"] = "complete"
        _record(rec_path, rec)
        return rec
    except BaseException as exc:
        done = len(rec["uploaded"])
        rec["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        rec["error"] = _oneline(exc, token)
        _record(rec_path, rec)
        if isinstance(exc, (KeyboardInterrupt, PublishError)):
            raise
        if rec.get("to_upload") is not None and rec["status"] == "failed":
            raise PublishError(
                f"publishing to {target.label} stopped after {len(rec['commits'])} of {rec.get('planned_commits')} "
                f"commit(s) ({done} of {len(rec['to_upload'])} file(s) uploaded): {rec['error']}. The publish is "
                f"NOT complete; run the same command again to resume (only what is missing is uploaded); "
                f"see {rec_path}") from None
        raise


def summary(rec: dict[str, Any]) -> dict[str, Any]:
    """The publish's last output line."""
    return {"target": rec["target"], "status": rec["status"], "uploaded": len(rec.get("uploaded") or []),
            "unchanged": len(rec.get("unchanged") or []), "deleted": len(rec.get("deleted") or []),
            "commits": len(rec.get("commits") or [])}
