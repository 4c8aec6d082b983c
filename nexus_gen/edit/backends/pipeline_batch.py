"""Batching the diffusers calls of many edits. An edit is written once, as a generator that
yields each pipeline call it needs (`PipeCall`) and receives the image back; `drive_one` runs one
edit with every call alone, `drive_all` runs a shard's edits side by side and sends calls that
share a pipeline and its settings (`PipeCall.key`) in batches of up to `batch_size`: a list of
prompts and images with one seeded generator per item, so each item gets the same starting
noise as alone. Numerically a batch is not bit-identical to its items run alone on every
backend (BLAS and convolution kernels pick their reduction order by batch size): a recipe that
must reproduce unbatched bytes keeps `batch_size: 1`, the default. A batch that raises is
retried item by item, so one bad item is one reject."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Hashable, Optional, Union

from PIL import Image

from nexus_gen.edit.backends.base import EditError

# fields given per item; everything else in a call is shared by its batch (and is in its key)
PER_ITEM = ("prompt", "image", "mask_image", "control_image")


@dataclass
class PipeCall:
    """One pipeline call of one edit: `role` picks the pipeline, `per_item` holds the PER_ITEM
    fields, `shared` the rest (all calls of a batch have equal `key`s: role and shared)."""

    role: str
    seed: int
    per_item: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)
    share_key: tuple[Hashable, ...] = ()  # what in `shared` is not hashable, by a stand-in (a path)

    @property
    def key(self) -> tuple[Hashable, ...]:
        plain = tuple(sorted((k, v) for k, v in self.shared.items() if isinstance(v, (int, float, str, type(None)))))
        return (self.role, plain, self.share_key)


Steps = Generator[PipeCall, Image.Image, Any]
Runner = Callable[[list[PipeCall]], list[Union[Image.Image, Exception]]]


def run_calls(calls: list[PipeCall], batch_size: int, load: Callable[[str], Any],
              name: Callable[[str], str]) -> list[Union[Image.Image, Exception]]:
    """Each call's image (RGB) or its `EditError`, in order; calls with equal keys run together
    in chunks of `batch_size` (first-come order)."""
    out: list[Union[Image.Image, Exception, None]] = [None] * len(calls)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(calls):
        groups.setdefault(c.key, []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            try:
                images = _call(load, [calls[i] for i in chunk])
            except Exception as exc:
                if len(chunk) > 1:  # find the item that fails: each alone
                    for i in chunk:
                        out[i] = run_calls([calls[i]], 1, load, name)[0]
                    continue
                c = calls[chunk[0]]
                images = [EditError(f"{c.role} {name(c.role)} failed: {type(exc).__name__}: {exc}")]
            for i, img in zip(chunk, images):
                out[i] = img
    return out  # type: ignore[return-value]


def _call(load: Callable[[str], Any], calls: list[PipeCall]) -> list[Image.Image]:
    import torch

    pipe = load(calls[0].role)
    one = len(calls) == 1  # alone: plain values, as an unbatched call
    kwargs: dict[str, Any] = dict(calls[0].shared)
    for f in PER_ITEM:
        if f in calls[0].per_item:
            vals = [c.per_item[f] for c in calls]
            kwargs[f] = vals[0] if one else vals
    gens = [torch.Generator("cpu").manual_seed(c.seed) for c in calls]
    kwargs["generator"] = gens[0] if one else gens
    with torch.inference_mode():
        images = pipe(**kwargs, output_type="pil").images
    if len(images) != len(calls):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(calls)} items")
    return [x.convert("RGB") for x in images]


def drive_one(steps: Steps, run: Runner) -> Any:
    """Run one edit, each of its calls alone; its return value, or its exception raised."""
    call = next(steps)
    while True:
        got = run([call])[0]
        try:
            call = steps.throw(got) if isinstance(got, Exception) else steps.send(got)
        except StopIteration as stop:
            return stop.value


def drive_all(all_steps: list[Optional[Steps]], run: Runner) -> list[Any]:
    """Run many edits side by side, their pending calls batched by `run`; each edit's return
    value or the exception it raised, in order (None steps: None)."""
    results: list[Any] = [None] * len(all_steps)
    pending: dict[int, PipeCall] = {}

    def advance(i: int, value: Any) -> None:
        steps = all_steps[i]
        try:
            if value is None:
                pending[i] = next(steps)
            elif isinstance(value, Exception):
                pending[i] = steps.throw(value)
            else:
                pending[i] = steps.send(value)
        except StopIteration as stop:
            results[i] = stop.value
        except Exception as exc:  # the edit's own reject (EditError) or a bug: that item only
            results[i] = exc

    for i, s in enumerate(all_steps):
        if s is not None:
            advance(i, None)
    while pending:
        order = sorted(pending)
        calls = [pending.pop(i) for i in order]
        for i, got in zip(order, run(calls)):
            advance(i, got)
    return results
