"""The scenes world's colours: GenEval's 10 object colours and the backgrounds they stand out from.

Object colours are saturated (chroma >= 100), near-black or near-white; backgrounds are
low-saturation mid greys (chroma <= 30, every channel in [90, 190]). The detector separates
the two with the thresholds below, so they live beside the colours they were chosen for."""
from __future__ import annotations

COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 30),
    "green": (40, 165, 60),
    "blue": (35, 80, 220),
    "purple": (135, 50, 180),
    "pink": (250, 130, 195),
    "brown": (135, 80, 35),
    "black": (20, 20, 20),
    "white": (242, 242, 242),
}

# Plain background tones: low saturation, mid lightness (far from every object colour).
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "grey": (150, 150, 150),
    "light grey": (174, 174, 174),
    "dark grey": (105, 105, 105),
    "beige": (175, 166, 146),
    "slate": (110, 120, 135),
    "sage": (140, 152, 132),
}

# Foreground rule (shared by renderer checks and the detector): a pixel is object-like when
# its chroma (max - min channel) exceeds FG_CHROMA, or it is darker than FG_DARK (every channel),
# or brighter than FG_LIGHT (every channel). Backgrounds never satisfy any of these.
FG_CHROMA = 48
FG_DARK = 56
FG_LIGHT = 212
BG_MIN, BG_MAX, BG_MAX_CHROMA = 90, 190, 30
# Texture amplitude (grey levels, added to all channels alike) for textured backgrounds.
TEXTURE_AMPLITUDE = 14

ZH_COLORS: dict[str, str] = {
    "red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色",
    "purple": "紫色", "pink": "粉色", "brown": "棕色", "black": "黑色", "white": "白色",
}
ZH_BACKGROUNDS: dict[str, str] = {
    "grey": "灰色", "light grey": "浅灰色", "dark grey": "深灰色", "beige": "米色",
    "slate": "石板灰色", "sage": "灰绿色",
}
