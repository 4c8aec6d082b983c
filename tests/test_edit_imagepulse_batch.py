"""Batched pipeline calls in the imagepulse backend: a shard's inpainting and img2img calls that
share a pipeline run as lists with one seeded generator per item. With batch_size 1 the edits are
byte-identical to editing each item alone; with larger batches each item gets the same starting
noise as alone, and its pixels differ from its unbatched output by at most a grey level or two
(CPU BLAS kernels sum in a batch-size-dependent order); one failing item is one reject."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from nexus_gen.edit.backends import imagepulse_models as im
from nexus_gen.edit.backends.base import EditError, EditSpec, SourceRef
from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
from nexus_gen.edit.recipe import ImagePulseParams

PHOTOS = REPO / "datasets_spec" / "examples" / "nexus_gen_example" / "assets" / "example_datasets" / "images"
FILES = ("gen_0.png", "edit_0_0.png", "und_0.jpg")


def _backend(batch_size: int) -> ImagePulseBackend:
    return ImagePulseBackend({"detector": "tiny", "inpainter": "tiny", "stylizer": "tiny"},
                             ImagePulseParams(inpaint_steps=2, style_steps=2, detector_threshold=0.05,
                                              add_methods=["reverse"], batch_size=batch_size))


def _items():
    src = [SourceRef("image", f"k{i}", "photos", 64, path=str(PHOTOS / f)) for i, f in enumerate(FILES)]
    return [(s, EditSpec("remove"), 5 + i) for i, s in enumerate(src)] + \
        [(s, EditSpec("style", "watercolor"), 1 + i) for i, s in enumerate(src)]


class _Recording:
    """A pipeline wrapper that records how many items each call carried, and the first latents."""

    def __init__(self, pipe, sizes):
        self.pipe, self.sizes = pipe, sizes

    def __call__(self, **kw):
        self.sizes.append(len(kw["prompt"]) if isinstance(kw["prompt"], list) else 1)
        return self.pipe(**kw)


@pytest.fixture
def recorded(monkeypatch):
    sizes: list[int] = []
    for name in ("load_inpainter", "load_stylizer"):
        real = getattr(im, name)
        monkeypatch.setattr(im, name, lambda *a, _real=real, **k: _Recording(_real(*a, **k), sizes))
    return sizes


def test_batch_size_one_is_byte_identical_to_single_edits(recorded):
    bk = _backend(1)
    alone = [bk.edit(*it) for it in _items()]
    together = bk.edit_batch(_items())
    assert all(s == 1 for s in recorded)
    for a, b in zip(alone, together):
        assert a.target.tobytes() == b.target.tobytes() and a.lineage == b.lineage


def test_batches_match_unbatched_outputs(recorded):
    alone = [_backend(1).edit(*it) for it in _items()]
    n_alone = len(recorded)
    together = _backend(3).edit_batch(_items())
    assert recorded[n_alone:] == [3, 3]  # three removals in one inpainting call, three styles in one
    again = _backend(3).edit_batch(_items())
    for a, b, c in zip(alone, together, again):
        assert b.target.tobytes() == c.target.tobytes()  # deterministic
        x, y = np.asarray(a.target, dtype=int), np.asarray(b.target, dtype=int)
        assert np.abs(x - y).max() <= 2 and (x != y).mean() < 0.05
        assert a.lineage == b.lineage and a.instruction == b.instruction
        if a.edit_type == "remove":  # outside the dilated mask: the source's pixels, exactly
            assert np.array_equal(np.asarray(b.target)[~b.mask], np.asarray(b.source)[~b.mask])


def test_same_starting_noise_per_item():
    """Each item's generator gives the same latents in a batch as alone (diffusers' per-item
    generator list), the reason batched outputs stay close to unbatched ones."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator("cpu").manual_seed(s) for s in (5, 6, 7)]
    batch = randn_tensor((3, 4, 8, 8), generator=gens, dtype=torch.float32)
    for i, s in enumerate((5, 6, 7)):
        alone = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(s))
        assert torch.equal(batch[i:i + 1], alone)


def test_one_failing_item_in_a_batch_is_one_reject(monkeypatch):
    real = im.load_inpainter

    def picky(*a, **k):
        pipe = real(*a, **k)

        def call(**kw):
            gens = kw["generator"] if isinstance(kw["generator"], list) else [kw["generator"]]
            if any(g.initial_seed() == 6 for g in gens):  # the second item stands in for a bad one
                raise RuntimeError("simulated failure")
            return pipe(**kw)
        return call

    monkeypatch.setattr(im, "load_inpainter", picky)
    items = _items()[:3]  # removals with seeds 5, 6, 7
    out = _backend(3).edit_batch(items)
    assert isinstance(out[1], EditError)
    assert str(out[1]).startswith("inpainter tiny:") and "RuntimeError: simulated failure" in str(out[1])
    for i in (0, 2):  # retried alone: exactly the unbatched bytes
        assert out[i].target.tobytes() == _backend(1).edit(*items[i]).target.tobytes()
