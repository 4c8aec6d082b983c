"""Edit backends, one file each, behind the interface in `base.py`. `BACKENDS` maps the name a
recipe gives in `models.editor` to the backend class."""
from __future__ import annotations

from nexus_gen.edit.backends.scenes import ScenesBackend

BACKENDS = {ScenesBackend.NAME: ScenesBackend}
