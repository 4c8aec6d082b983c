"""Embedding pre-compute for the decoder stages: resumable, sharded, keyed by sample id.

`gen` mode: the ground-truth target embedding (`target`, [N, D]) of each generation sample's output
image, the frozen ViT + merger of its S x S centre crop (the reference's prepare_embeddataset_for_gen).
`edit` mode: for each editing sample, the AR model's teacher-forced prediction of the target
(`predicted`, [N, D]: the prefilled forward on the editing conversation, whose inputs never depend
on the target) and the source image's embedding at S2 x S2 (`source`, [M, D]); as the reference's
prepare_embeddataset_for_edit, the source enters the conversation resized to S2 x S2 too.

Work is planned deterministically from the input shards: a unit is one input shard and a chunk of
K of its samples of the mode's task, written as `emb-<shard>-<chunk>.safetensors`
(`write_embedding_shard`, atomic) with the unit's ids, skipped ids (with reasons), the input's
sha256 and the model's fingerprint in its metadata. A rerun computes only units whose file is
missing or stale (input sha256 or ids changed); a folder from another model or mode is refused
before any work. `finish_precompute` writes manifest.json: units with ids and sha256, and counts
that reconcile (samples = embedded + skipped)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from nexus_gen.data.shards import write_json_atomic
from nexus_gen.hashing import file_sha256
from nexus_gen.train.embedding_store import STORE_FORMAT, write_embedding_shard

log = logging.getLogger(__name__)

MODES = {"gen": "generation", "edit": "editing"}
KINDS_BY_MODE = {"gen": ("target",), "edit": ("predicted", "source")}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "nexus-gen-embeddings-manifest/1"
DEFAULT_CHUNK = 64


class PrecomputeError(ValueError):
    """Inputs or an output folder the pre-compute cannot use (named, with the problem)."""


@dataclass(frozen=True)
class Unit:
    """One unit of work: `ids` (samples of the mode's task, file order) of input `shard`."""
    shard: str
    name: str
    chunk: int
    ids: tuple[str, ...]
    input_sha256: str
    rows: tuple[int, ...] = ()  # the ids' row positions in `shard` (read only their row groups)

    @property
    def file(self) -> str:
        """The unit's output file name."""
        return f"emb-{self.name}-{self.chunk:05d}.safetensors"


@dataclass
class PrecomputePlan:
    """Every unit of a run, and which still need computing (`todo`, after `check_existing`)."""
    mode: str
    out: Path
    units: list[Unit]
    samples: int
    todo: list[Unit] = field(default_factory=list)


def resolve_inputs(data: Sequence[Union[str, Path]]) -> list[tuple[str, list[Path]]]:
    """Each DATA argument with its parquet shards: a file, a folder of shards, or a build run
    folder (its `data/`)."""
    from nexus_gen.data.shards import build_shards

    out = []
    for d in data:
        p = Path(d)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            folder = p / "data" if (p / "data").is_dir() else p
            files = build_shards(folder) or sorted(folder.glob("*.parquet"))
            if not files:
                raise PrecomputeError(f"{d}: no parquet shards in this folder")
        else:
            raise PrecomputeError(f"{d}: no such file or folder")
        out.append((str(d), files))
    return out


def plan_precompute(mode: str, data: Sequence[Union[str, Path]], out: Union[str, Path],
                    chunk_size: int = DEFAULT_CHUNK, limit: Optional[int] = None) -> PrecomputePlan:
    """Units from the inputs (no model needed): every DATA argument must hold samples of the
    mode's task, sample ids must be unique, shard names distinct."""
    import pyarrow.parquet as pq

    if mode not in MODES:
        raise PrecomputeError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if chunk_size <= 0:
        raise PrecomputeError(f"chunk size must be positive, got {chunk_size}")
    if limit is not None and limit <= 0:
        raise PrecomputeError(f"--limit must be positive, got {limit}")
    task = MODES[mode]
    units: list[Unit] = []
    seen: dict[str, str] = {}
    names: dict[str, str] = {}
    total = 0
    for arg, files in resolve_inputs(data):
        n_arg = 0
        for f in files:
            try:
                table = pq.read_table(f, columns=["id", "task"]).to_pydict()
            except Exception as e:  # pyarrow raises its own error types for a file that is no shard
                raise PrecomputeError(f"{f}: not a unified-sample shard ({e})") from None
            ids, rows = [], []
            for r, (i, t) in enumerate(zip(table["id"], table["task"])):
                if t == task:
                    ids.append(i)
                    rows.append(r)
            for i in ids:
                if i in seen:
                    raise PrecomputeError(f"sample id {i!r} is in both {seen[i]} and {f}")
                seen[i] = str(f)
            if limit is not None:
                ids, rows = ids[:max(0, limit - total)], rows[:max(0, limit - total)]
            n_arg += len(ids)
            total += len(ids)
            if not ids:
                continue
            name = Path(f).stem
            if name in names and names[name] != str(f):
                raise PrecomputeError(f"two inputs share the shard name {name!r} ({names[name]}, {f}): "
                                      "pre-compute them into separate output folders")
            names[name] = str(f)
            sha = file_sha256(f)
            for c in range(0, len(ids), chunk_size):
                units.append(Unit(str(f), name, c // chunk_size, tuple(ids[c:c + chunk_size]), sha,
                                  tuple(rows[c:c + chunk_size])))
        if n_arg == 0 and (limit is None or total < limit):
            raise PrecomputeError(f"{arg}: no {task} samples (the `{mode}` pre-compute needs them)")
    return PrecomputePlan(mode, Path(out), units, total, list(units))


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model's config and weights (the first values of every tensor)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _unit_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def check_existing(plan: PrecomputePlan, fingerprint: str) -> PrecomputePlan:
    """Mark units done whose file matches (same input sha256, same ids); refuse a folder written by
    another model or mode; remove unit files of planned shards that the plan no longer has."""
    todo = []
    planned = {u.file for u in plan.units}
    shard_names = {u.name for u in plan.units}
    if plan.out.is_dir():
        for p in sorted(plan.out.glob("emb-*.safetensors")):
            meta = _unit_meta(p)
            if meta.get("format") != STORE_FORMAT:
                raise PrecomputeError(f"{p}: not a nexus-gen embedding shard")
            if meta.get("mode") != plan.mode or meta.get("model_fingerprint") != fingerprint:
                raise PrecomputeError(
                    f"{plan.out} holds embeddings from another model or mode ({p.name}: mode "
                    f"{meta.get('mode')!r}, model {meta.get('model_fingerprint')!r}; this run: "
                    f"{plan.mode!r}, {fingerprint!r}): use a new output folder")
            if p.name not in planned and meta.get("input_name") in shard_names:
                log.info("%s: a chunk the plan no longer has; removed", p.name)
                p.unlink()
    for u in plan.units:
        p = plan.out / u.file
        if p.exists():
            meta = _unit_meta(p)
            done = json.loads(meta.get("ids", "[]")) + list(json.loads(meta.get("skipped", "{}")))
            if meta.get("input_sha256") == u.input_sha256 and sorted(done) == sorted(u.ids):
                continue
            log.info("%s is stale (input or ids changed): recomputing", u.file)
        todo.append(u)
    plan.todo = todo
    if todo:  # the manifest says "finished": not while units are being (re)computed
        (plan.out / MANIFEST).unlink(missing_ok=True)
    return plan


def _split_images(sample: dict[str, Any]) -> tuple[list[Any], list[Any], Optional[str]]:
    """(input images, output images, reason it is unusable or None)."""
    from nexus_gen.models.nexus_ar import IMAGE_TAG, _content_text
    from nexus_gen.train.stage_ar import open_image

    tags = [(m["role"], _content_text(m["content"]).count(IMAGE_TAG)) for m in sample["messages"]]
    if sum(n for _, n in tags) != len(sample["images"]):
        return [], [], f"{sum(n for _, n in tags)} <image> tags but {len(sample['images'])} images"
    try:
        images = [open_image(im) for im in sample["images"]]
    except (OSError, ValueError) as e:
        return [], [], f"unreadable image ({e})"
    ins, outs, k = [], [], 0
    for role, n in tags:
        (outs if role == "assistant" else ins).extend(images[k:k + n])
        k += n
    return ins, outs, None


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def compute_unit(unit: Unit, model: Any, mode: str, out: Union[str, Path], fingerprint: str,
                 batch_size: int = 8) -> dict[str, Any]:
    """Embed one unit's samples and write its file; returns {file, ids, skipped}."""
    from nexus_gen.data.shards import iter_samples, read_rows
    from nexus_gen.models.nexus_ar import square_image

    want = set(unit.ids)
    # the unit's rows only (the plan's positions, checked by id: the input's sha256 is in the plan)
    rows = read_rows(unit.shard, unit.rows) if unit.rows else iter_samples([unit.shard])
    samples = {s["id"]: s for s in rows if s["id"] in want}
    geo = model.geometry
    skipped: dict[str, str] = {}
    ready: list[tuple[str, dict[str, Any], list[Any], list[Any]]] = []
    for sid in unit.ids:
        s = samples.get(sid)
        if s is None:
            skipped[sid] = "not found in its shard"
            continue
        ins, outs, reason = _split_images(s)
        if reason is None and mode == "gen" and (ins or len(outs) != 1):
            reason = f"a generation sample needs 1 output image and no input (has {len(ins)} + {len(outs)})"
        if reason is None and mode == "edit" and (len(ins) != 1 or len(outs) != 1):
            reason = f"an editing sample needs 1 source and 1 target image (has {len(ins)} + {len(outs)})"
        if reason is not None:
            skipped[sid] = reason
            continue
        ready.append((sid, s, ins, outs))
    items: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for batch in _batches(ready, batch_size):
            if mode == "gen":
                emb = model.image_embeddings([b[3][0] for b in batch], geo["image_size"], fit="crop")
                for (sid, *_), e in zip(batch, emb):
                    items[sid] = {"target": e}
            else:
                sources = [square_image(b[2][0], geo["source_image_size"], "resize") for b in batch]
                pred = model.predict_image_embeds([b[1]["messages"] for b in batch],
                                                  [[src] for src in sources], prefill=True)
                src = model.image_embeddings(sources, geo["source_image_size"], fit="resize")
                for (sid, *_), p, e in zip(batch, pred, src):
                    items[sid] = {"predicted": p, "source": e}
    for sid, reason in skipped.items():
        log.warning("precompute %s: skipped %s: %s", unit.file, sid, reason)
    meta = {"mode": mode, "kinds": json.dumps(KINDS_BY_MODE[mode]), "model_fingerprint": fingerprint,
            "input": unit.shard, "input_name": unit.name, "input_sha256": unit.input_sha256,
            "chunk": str(unit.chunk), "skipped": json.dumps(skipped, sort_keys=True),
            "geometry": json.dumps(geo, sort_keys=True), "model": str(model.name_or_path)}
    write_embedding_shard(Path(out) / unit.file, items, meta)
    return {"file": unit.file, "ids": list(items), "skipped": skipped}


def finish_precompute(plan: PrecomputePlan) -> dict[str, Any]:
    """Write manifest.json (units with ids, skipped, sha256) and check that samples = embedded +
    skipped; returns the manifest."""
    units, embedded, skipped = [], 0, 0
    meta: dict[str, str] = {}
    for u in plan.units:
        p = plan.out / u.file
        if not p.exists():
            raise PrecomputeError(f"{p}: unit missing (a unit failed): run the same command again")
        meta = _unit_meta(p)
        ids, skip = json.loads(meta["ids"]), json.loads(meta.get("skipped", "{}"))
        embedded += len(ids)
        skipped += len(skip)
        units.append({"file": u.file, "input": u.shard, "input_sha256": u.input_sha256, "chunk": u.chunk,
                      "ids": ids, "skipped": skip, "sha256": file_sha256(p)})
    if embedded + skipped != plan.samples:
        raise PrecomputeError(f"counts do not reconcile: {plan.samples} samples in, {embedded} embedded "
                              f"+ {skipped} skipped")
    manifest = {"format": MANIFEST_FORMAT, "mode": plan.mode, "kinds": list(KINDS_BY_MODE[plan.mode]),
                "model": meta.get("model"), "model_fingerprint": meta.get("model_fingerprint"),
                "geometry": json.loads(meta.get("geometry", "{}")), "units": units,
                "counts": {"samples": plan.samples, "embedded": embedded, "skipped": skipped}}
    write_json_atomic(plan.out / MANIFEST, manifest, sort_keys=True)
    return manifest


def load_ar_model(spec: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """`NexusGenAR` from `tiny`, a folder or a hub id, in eval mode."""
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.train.stage_ar import resolve_ar_path

    try:
        model = NexusGenAR.from_pretrained(resolve_ar_path(spec), dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrecomputeError(f"--ar {spec}: cannot load a Nexus-Gen AR model ({first})") from None
    if model.processor is None:
        raise PrecomputeError(f"--ar {spec}: the folder has no processor (tokenizer + image processor)")
    return model.to(device).eval()


def precompute(mode: str, data: Sequence[Union[str, Path]], out: Union[str, Path], model: Any,
               chunk_size: int = DEFAULT_CHUNK, batch_size: int = 8, limit: Optional[int] = None
               ) -> dict[str, Any]:
    """The whole pre-compute in a plain loop (the flow runs the same steps as tasks)."""
    plan = plan_precompute(mode, data, out, chunk_size, limit)
    fp = model_fingerprint(model)
    check_existing(plan, fp)
    plan.out.mkdir(parents=True, exist_ok=True)
    for u in plan.todo:
        compute_unit(u, model, mode, plan.out, fp, batch_size)
    manifest = finish_precompute(plan)
    manifest["computed"] = len(plan.todo)
    return manifest
