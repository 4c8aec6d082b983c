"""Where a scorer model comes from and the id it is recorded under, shared by the transformers
encoders (DINO, Chinese-CLIP): a spec is `tiny` (built locally, offline), a local
`save_pretrained` folder, a profile name or a hub id. A local model's id carries a digest of its
weights, so two different folders never share cached embeddings or recorded scores."""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Union

import torch

from nexus_gen.hashing import update_from_file
from nexus_gen.scoring.hub import ModelUnavailableError, hub_files, quiet_progress


def default_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype when none is given: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def weights_id(path: Path) -> str:
    """The first 16 hex digits of the sha256 of a model folder's weight files (`*.safetensors`,
    else `*.bin`, in name order), or `no-weights`."""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        update_from_file(h, f)
    return h.hexdigest()[:16] if files else "no-weights"


def resolve_source(what: str, spec: str, profiles: Mapping[str, str], tiny_dir: Callable[[], Path],
                   tiny_name: str) -> tuple[Union[str, Path], str]:
    """`(source, model_id)` of a spec: `tiny` -> (`tiny_dir()`, `<tiny_name>@sha256:<weights>`),
    a local folder -> (its resolved path, `<folder name>@sha256:<weights>`), else the hub id
    (`profiles` maps names such as `paper` to one) as both. `what` names the model in errors."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what} spec must be a non-empty string, got {spec!r}")
    if spec == "tiny":
        source = tiny_dir()
        return source, f"{tiny_name}@sha256:{weights_id(Path(source))}"
    if Path(spec).expanduser().is_dir():
        source = Path(spec).expanduser().resolve()
        return source, f"{source.name}@sha256:{weights_id(source)}"
    hub_id = profiles.get(spec, spec)
    return hub_id, hub_id


@contextlib.contextmanager
def loading(what: str, spec: str, source: Union[str, Path], fix: str) -> Iterator[None]:
    """Around `from_pretrained(source)`: a hub id fails fast when it cannot be had
    (`hub.hub_files`), the progress bar is off, and a load that fails raises one
    `ModelUnavailableError` ("cannot load <what> <spec> (<source>): <why>; <fix>")."""
    guard = hub_files(f"{what} {spec!r}", source, ["config.json"], fix) \
        if isinstance(source, str) else contextlib.nullcontext()
    try:
        with guard, quiet_progress():
            yield
    except (OSError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ModelUnavailableError(f"cannot load {what} {spec!r} ({source}): {why}; {fix}") from exc
