"""Edit backends, one file each, behind the interface in `base.py`. `BACKENDS` maps the name a
recipe gives in `models.editor` to the backend class. `PLANNED_BACKENDS` are names a recipe may
already use (its roles are validated) but that this version cannot run: a build of such a recipe
stops before any work with the reason."""
from __future__ import annotations

from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
from nexus_gen.edit.backends.scenes import ScenesBackend

BACKENDS = {ScenesBackend.NAME: ScenesBackend, ImagePulseBackend.NAME: ImagePulseBackend}
PLANNED_BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {}
