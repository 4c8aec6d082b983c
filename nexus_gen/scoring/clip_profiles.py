"""The named CLIP profiles, in a module without torch, so reports can tell which CLIP a run used
without loading one."""
from __future__ import annotations

# name -> (open_clip model, pretrained tag)
PROFILES: dict[str, tuple[str, str]] = {
    "paper": ("ViT-L-14-quickgelu", "openai"),
    "small": ("ViT-B-32-quickgelu", "openai"),
}


def expand_profile(spec: str) -> str:
    """A profile name as its `MODEL:TAG` spec; any other spec as it is."""
    return "{}:{}".format(*PROFILES[spec]) if spec in PROFILES else spec
