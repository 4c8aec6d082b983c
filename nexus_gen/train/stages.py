"""The training stages by name: "ar", "gen-decoder", "edit-decoder" -> the `TrainStage` class,
imported lazily from a "module:Class" string (importing the registry loads no model code).

More stages (a plugin, or a toy stage in tests) are registered without touching this file through
the environment: `NEXUS_GEN_TRAIN_STAGES="name=package.module:Class[,name2=...]"`."""
from __future__ import annotations

import importlib
import os

from nexus_gen.train.stage_api import TrainStage

STAGES: dict[str, str] = {
    "ar": "nexus_gen.train.stage_ar:ARStage",
    "gen-decoder": "nexus_gen.train.stage_gen_decoder:GenDecoderStage",
    "edit-decoder": "nexus_gen.train.stage_edit_decoder:EditDecoderStage",
    "vae": "nexus_gen.train.stage_vae:VAEStage",
}
EXTRA_STAGES_ENV = "NEXUS_GEN_TRAIN_STAGES"


class StageError(ValueError):
    """An unknown stage name, or a stage whose code cannot be imported."""


def extra_stages() -> dict[str, str]:
    """Stages registered through `NEXUS_GEN_TRAIN_STAGES` ("name=module:Class,...")."""
    text = os.environ.get(EXTRA_STAGES_ENV, "").strip()
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target or not name.strip():
            raise StageError(f"{EXTRA_STAGES_ENV}: {item!r} is not name=module:Class")
        out[name.strip()] = target.strip()
    return out


def stage_names() -> list[str]:
    """Every registered stage name (built-in first)."""
    return [*STAGES, *(n for n in extra_stages() if n not in STAGES)]


def stage_class(name: str) -> type[TrainStage]:
    """The `TrainStage` subclass registered as `name`; a clear `StageError` when the name is
    unknown, its module is not there (yet) or it is not a TrainStage."""
    table = {**extra_stages(), **STAGES}
    if name not in table:
        raise StageError(f"unknown stage {name!r}; allowed: {', '.join(stage_names())}")
    target = table[name]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise StageError(f"stage {name!r}: its module {module_name} is not installed in this "
                             f"checkout (not written yet, or an incomplete install)") from None
        raise
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, TrainStage)):
        raise StageError(f"stage {name!r}: {target} is not a TrainStage subclass")
    if getattr(cls, "name", name) != name:
        raise StageError(f"stage {name!r}: {target} declares name {cls.name!r}")
    return cls
