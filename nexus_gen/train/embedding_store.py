"""Pre-computed image embeddings keyed by sample id: safetensors shards in one folder.

Each shard `emb-*.safetensors` holds tensors named `<sample id>::<kind>` (kinds: `target` = the
ground-truth ViT + merger embedding of the output image, `predicted` = the AR model's
teacher-forced prediction of it, `source` = the source image's ViT embedding) and, in its
safetensors metadata, the ids it holds. Shards are written to a temporary name and renamed, so a
reader never sees half a shard; `manifest.json` (optional, written when a pre-compute run ends)
lists shards with their ids and sha256."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch

STORE_FORMAT = "nexus-gen-embeddings"
STORE_MANIFEST = "manifest.json"  # written by the pre-compute when a run ends
log = logging.getLogger(__name__)
SEP = "::"
KINDS = ("target", "predicted", "source")


def tensor_name(sample_id: str, kind: str) -> str:
    """The tensor name of one embedding in a shard."""
    if kind not in KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}: use one of {', '.join(KINDS)}")
    return f"{sample_id}{SEP}{kind}"


def write_embedding_shard(path: Union[str, Path], items: Mapping[str, Mapping[str, torch.Tensor]],
                          meta: Optional[Mapping[str, str]] = None) -> Path:
    """Write `{sample_id: {kind: tensor}}` to `path` atomically (temporary name, then rename).
    Tensors are stored contiguous on CPU in their own dtype; `meta` goes to the file's metadata."""
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for sid, kinds in items.items():
        if not kinds:
            raise ValueError(f"embedding shard {path}: sample {sid!r} has no embeddings")
        for kind, t in kinds.items():
            tensors[tensor_name(sid, kind)] = t.detach().to("cpu").contiguous()
    header = {str(k): str(v) for k, v in (meta or {}).items()}
    header.update(format=STORE_FORMAT, ids=json.dumps(list(items)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(_sorted_header(save(tensors, metadata=header)))
    os.replace(tmp, path)
    return path


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted: the library writes its metadata map
    in a random order, so the same tensors and metadata would give different bytes each time."""
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8:8 + n])
    text = json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header with spaces to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def shard_ids(path: Union[str, Path]) -> list[str]:
    """The sample ids one shard holds (from its metadata; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != STORE_FORMAT:
        raise ValueError(f"{path} is not a nexus-gen embedding shard (metadata format "
                         f"{meta.get('format')!r})")
    return json.loads(meta["ids"])


class EmbeddingStore:
    """Read access to an embedding folder: `ids()`, `id in store`, `store.get(id)` ->
    `{kind: tensor}`. Shards are opened lazily; a sample id in two shards is an error."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"embedding store {self.folder} does not exist: run the "
                                    "embedding pre-compute first (`nexus-gen precompute ...`)")
        self._where: dict[str, Path] = {}
        listed = self._listed_units()
        self.complete = listed is not None
        for shard in sorted(self.folder.glob("emb-*.safetensors")):
            ids = listed.pop(shard.name) if listed and shard.name in listed else shard_ids(shard)
            for sid in ids:
                if sid in self._where:
                    raise ValueError(f"embedding store {self.folder}: sample {sid!r} is in both "
                                     f"{self._where[sid].name} and {shard.name}")
                self._where[sid] = shard
        if listed:
            raise ValueError(f"embedding store {self.folder}: {len(listed)} unit files its {STORE_MANIFEST} lists "
                             f"are missing (e.g. {sorted(listed)[0]}): rerun the same pre-compute to remake them")
        if not self.complete:
            log.warning("embedding store %s has no %s: its pre-compute has not finished (or the store was "
                        "written by hand); samples without embeddings will be skipped", self.folder, STORE_MANIFEST)

    def _listed_units(self) -> Optional[dict[str, list[str]]]:
        """{unit file: ids} from the pre-compute's manifest (no shard opened), or None without one."""
        path = self.folder / STORE_MANIFEST
        if not path.is_file():
            return None
        try:
            units = json.loads(path.read_text(encoding="utf-8"))["units"]
            return {u["file"]: list(u["ids"]) for u in units}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}): rerun the same pre-compute") from None

    def ids(self) -> list[str]:
        """Every sample id in the store, sorted."""
        return sorted(self._where)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, sample_id: str, kinds: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        """The embeddings of one sample (all kinds stored, or those named)."""
        from safetensors import safe_open

        shard = self._where.get(sample_id)
        if shard is None:
            raise KeyError(f"sample {sample_id!r} has no embeddings in {self.folder}: rerun the "
                           "pre-compute on the same data")
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as f:
            names = set(f.keys())
            for kind in (kinds or KINDS):
                name = tensor_name(sample_id, kind)
                if name in names:
                    out[kind] = f.get_tensor(name)
        if kinds is not None and set(kinds) - set(out):
            raise KeyError(f"sample {sample_id!r} in {shard}: no {sorted(set(kinds) - set(out))} "
                           "embeddings (the pre-compute ran for another stage)")
        return out

    def metadata(self) -> dict[str, Any]:
        """The metadata of the first shard (model id, dims ...), or {} for an empty store."""
        from safetensors import safe_open

        if not self._where:
            return {}
        first = min(set(self._where.values()))
        with safe_open(str(first), framework="pt") as f:
            return dict(f.metadata() or {})
