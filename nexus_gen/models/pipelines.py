"""Loading a diffusers pipeline by hub id or local folder, with a dtype given by name.

One place for what every caller needs: the dtype name checked (a clear error, not an
`AttributeError`), a missing or unreadable pipeline turned into one `ValueError` that names it,
the progress bar off (logs stay readable) and the pipeline moved to its device."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DTYPE_NAMES = "float32, float16, bfloat16"


def torch_dtype(name: str) -> Any:
    """The `torch.dtype` called `name` (`float32`, `float16`, `bfloat16`, ...); a `ValueError`
    naming it when torch has no such dtype."""
    import torch

    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype (use {DTYPE_NAMES})")
    return dtype


def load_pipeline(source: str | Path, pipeline_class: str = "DiffusionPipeline", *,
                  device: str = "cpu", dtype: str = "float32",
                  what: str = "diffusers pipeline") -> Any:
    """The diffusers `pipeline_class` (a class name in `diffusers`) loaded from `source` (a hub
    id or a pipeline folder) in `dtype`, on `device`, progress bar off. A pipeline that cannot
    be loaded raises a `ValueError` naming `what` and `source` (offline, a hub id must already be
    in the Hugging Face cache)."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    resolved = torch_dtype(dtype)
    try:
        pipe = cls.from_pretrained(str(source), dtype=resolved)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ValueError(
            f"cannot load {what} {str(source)!r}: not a pipeline folder and not in the Hugging "
            f"Face cache or hub (offline?): {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sampling_kwargs(steps: Optional[int] = None, guidance: Optional[float] = None) -> dict[str, Any]:
    """The diffusers call arguments for the sampling settings given (`num_inference_steps`,
    `guidance_scale`); a setting left None is left out, so the pipeline's own default applies."""
    kwargs: dict[str, Any] = {}
    if steps is not None:
        kwargs["num_inference_steps"] = int(steps)
    if guidance is not None:
        kwargs["guidance_scale"] = float(guidance)
    return kwargs
