"""The one small interface every edit backend implements: a source image and an edit spec in;
target, mask, instructions (both directions, every language), captions and lineage out.

Adding a backend is one file in this folder plus one line in `BACKENDS`; no other backend changes.
A backend may raise `EditError` for a source that yields no valid edit: the item becomes a reject."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np
from PIL import Image


class EditError(ValueError):
    """This source yields no valid edit of this kind (a reject, not a crash)."""


@dataclass(frozen=True)
class SourceRef:
    """A source image as the plan names it: `kind` scene (a scene dict, rendered at `size`) or
    image (a file, a streamed dataset's row or a generated image, fitted to `size`); `key` is its
    content fingerprint (generated: of prompt, seed and model id)."""

    kind: str  # "scene" | "image"
    key: str
    source: str  # the recipe source's name
    size: int
    scene: Optional[dict[str, Any]] = None
    path: Optional[str] = None
    caption: Optional[str] = None
    error: Optional[str] = None  # why the source could not be read at planning time
    aspect: str = "square"  # square: centre-cropped to size x size; keep: longer side = size
    dataset: Optional[dict[str, Any]] = None  # a streamed dataset's row: path, split, column, count, row
    generated: Optional[dict[str, Any]] = None  # a generated image: prompt, seed, model, steps, ...


@dataclass(frozen=True)
class EditSpec:
    """What to do to a source: `type` add | remove | style, and the `style` for style edits."""

    type: str
    style: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **({"style": self.style} if self.style else {})}


@dataclass
class EditOutput:
    """One triplet as a backend makes it. Texts are per language ('en', 'zh'); a caption may be
    None when the source has none. `mask` marks the pixels the edit may change."""

    edit_type: str
    source: Image.Image
    target: Image.Image
    mask: np.ndarray = field(repr=False)
    instruction: dict[str, str]
    reverse_instruction: dict[str, str]
    source_caption: dict[str, Optional[str]]
    target_caption: dict[str, Optional[str]]
    lineage: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)  # what the verifier checks (the object)


class EditBackend(Protocol):
    NAME: str
    ROLES: tuple[str, ...]  # model roles a recipe may give this backend (besides clip, dino)
    DETECTORS: Optional[tuple[str, ...]]  # the detectors it knows (None: any id or profile)

    @classmethod
    def from_recipe(cls, recipe: Any, base: Any, device: str = "cpu",
                    verify: bool = True) -> "EditBackend":
        """The backend a recipe asks for (`base`: the recipe's folder; `verify` False: for
        planning only, no verifier). Loads no model: models load on first use."""

    def check_models(self) -> list[str]:
        """Problems with the recipe's model ids (each names the role, the id and the reason),
        found without loading weights: the build stops on any before work starts."""

    def describe_models(self) -> dict[str, str]:
        """Role -> the id of the model it uses (lineage; a tiny model is built here)."""

    def model_report(self) -> dict[str, dict[str, Any]]:
        """Role -> spec, resolved id and status, without building or loading anything (dry run)."""

    def styles_for(self, source_kind: str) -> tuple[str, ...]:
        """Styles this backend can apply to sources of this kind (empty: no style edits)."""

    def supports(self, source_kind: str, edit_type: str) -> bool:
        """Whether sources of this kind can get this edit type."""

    def edit(self, source: SourceRef, spec: EditSpec, seed: int) -> EditOutput:
        """Make one triplet; raises EditError when the source yields no valid edit."""

    def verify(self, out: EditOutput) -> dict[str, Optional[bool]]:
        """Detector verdicts: `object_in_mask` (add), `object_present` (remove), else None."""
