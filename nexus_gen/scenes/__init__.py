"""The scenes world: a procedural world of coloured shapes (GenEval's 10 colours) on
backgrounds, rendered at any size with exact boxes and masks, plus a weight-free detector,
captions and instructions (EN/ZH), exact edits, GenEval-style prompts and understanding QA.

Modules: `palette`, `shapes`, `scene` (model + random scenes), `render`, `detect`, `text`,
`edits`, `styles`, `position` (GenEval's relation rule), `prompts`, `qa`,
`sheet` (contact sheet)."""
from nexus_gen.scenes.palette import COLOR_RGB, COLORS
from nexus_gen.scenes.scene import Background, Scene, SceneObject, random_scene
from nexus_gen.scenes.shapes import SHAPES

__all__ = ["COLORS", "COLOR_RGB", "SHAPES", "Background", "Scene", "SceneObject", "random_scene"]
