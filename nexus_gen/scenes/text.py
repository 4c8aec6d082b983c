"""Text of the scenes world, English and Chinese: captions, referring expressions, and edit
instructions (add / remove / style) with their reverse instructions. Pure templates."""
from __future__ import annotations

from typing import Optional

from nexus_gen.scenes.palette import ZH_BACKGROUNDS, ZH_COLORS
from nexus_gen.scenes.scene import Background, Scene, SceneObject, region_name
from nexus_gen.scenes.shapes import PLURALS, ZH_SHAPES

EN_NUMBERS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ZH_NUMBERS = ("零个", "一个", "两个", "三个", "四个", "五个", "六个", "七个", "八个", "九个", "十个")
EN_TEXTURES = {"speckled": "speckled", "striped": "striped", "checkered": "checkered"}
ZH_TEXTURES = {"speckled": "带斑点的", "striped": "条纹", "checkered": "棋盘格"}
EN_REGIONS = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
ZH_REGIONS = {
    "top left": "左上角", "top": "上方", "top right": "右上角", "left": "左侧", "centre": "中央",
    "right": "右侧", "bottom left": "左下角", "bottom": "下方", "bottom right": "右下角",
}


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def count_phrase(n: int, shape: str, color: Optional[str] = None) -> str:
    """English noun phrase: 'a red circle', 'an orange star', 'three blue hearts'."""
    if not 1 <= n < len(EN_NUMBERS):
        raise ValueError(f"count {n} out of range 1..{len(EN_NUMBERS) - 1}")
    words = ([color] if color else []) + [shape if n == 1 else PLURALS[shape]]
    head = article(words[0]) if n == 1 else EN_NUMBERS[n]
    return " ".join([head] + words)


def zh_count_phrase(n: int, shape: str, color: Optional[str] = None) -> str:
    """Chinese noun phrase: '一个红色圆形', '三个蓝色心形'."""
    if not 1 <= n < len(ZH_NUMBERS):
        raise ValueError(f"count {n} out of range 1..{len(ZH_NUMBERS) - 1}")
    return ZH_NUMBERS[n] + (ZH_COLORS[color] if color else "") + ZH_SHAPES[shape]


def join_en(parts: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def join_zh(parts: list[str]) -> str:
    """'x', 'x和y', 'x、y和z'."""
    return parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]


def groups(scene: Scene) -> list[tuple[str, str, int]]:
    """(colour, shape, count) per kind of object, in order of first appearance."""
    counts: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        counts[(o.color, o.shape)] = counts.get((o.color, o.shape), 0) + 1
    return [(c, s, n) for (c, s), n in counts.items()]


def background_phrase(bg: Background) -> str:
    """'a grey background', 'a grey to beige gradient background', 'a striped slate background'."""
    if bg.kind == "gradient":
        text = f"{bg.color} to {bg.color2} gradient background"
    elif bg.kind == "texture":
        text = f"{EN_TEXTURES[bg.texture]} {bg.color} background"
    else:
        text = f"{bg.color} background"
    return f"{article(text)} {text}"


def zh_background_phrase(bg: Background) -> str:
    """'灰色背景', '从灰色渐变到米色的背景', '条纹石板灰色背景'."""
    if bg.kind == "gradient":
        return f"从{ZH_BACKGROUNDS[bg.color]}渐变到{ZH_BACKGROUNDS[bg.color2]}的背景"
    if bg.kind == "texture":
        return f"{ZH_TEXTURES[bg.texture]}{ZH_BACKGROUNDS[bg.color]}背景"
    return f"{ZH_BACKGROUNDS[bg.color]}背景"


def caption(scene: Scene) -> str:
    """English caption, e.g. 'two red circles and a blue star on a grey background'."""
    if not scene.objects:
        return "an empty " + background_phrase(scene.background).split(" ", 1)[1]
    things = join_en([count_phrase(n, s, c) for c, s, n in groups(scene)])
    return f"{things} on {background_phrase(scene.background)}"


def caption_zh(scene: Scene) -> str:
    """Chinese caption, e.g. '灰色背景上有两个红色圆形和一个蓝色星形'."""
    bg = zh_background_phrase(scene.background)
    if not scene.objects:
        return f"一个空白的{bg}"
    return f"{bg}上有" + join_zh([zh_count_phrase(n, s, c) for c, s, n in groups(scene)])


def refer(scene: Scene, index: int) -> Optional[tuple[str, str]]:
    """An unambiguous (English, Chinese) reference to object `index`: 'the red circle', or
    'the red circle in the top left corner' when needed; None if no such phrase singles it out."""
    obj = scene.objects[index]
    same = [o for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)]
    base_en, base_zh = f"the {obj.color} {obj.shape}", ZH_COLORS[obj.color] + ZH_SHAPES[obj.shape]
    if len(same) == 1:
        return base_en, base_zh
    region = region_name(obj)
    if sum(region_name(o) == region for o in same) == 1:
        return f"{base_en} {EN_REGIONS[region]}", f"{ZH_REGIONS[region]}的{base_zh}"
    return None


_ADD_EN = ("Add {obj} {where}.", "Put {obj} {where}.", "Place {obj} {where}.")
_REMOVE_EN = ("Remove {ref}.", "Delete {ref}.", "Take away {ref}.")


def add_instruction(obj: SceneObject, variant: int = 0) -> tuple[str, str]:
    """(English, Chinese) instruction to add `obj` where it stands: 'Add a red circle on the left.'"""
    where = region_name(obj)
    en = _ADD_EN[variant % len(_ADD_EN)].format(obj=count_phrase(1, obj.shape, obj.color),
                                                 where=EN_REGIONS[where])
    zh = f"在{ZH_REGIONS[where]}添加{zh_count_phrase(1, obj.shape, obj.color)}。"
    return en, zh


def remove_instruction(scene: Scene, index: int, variant: int = 0) -> tuple[str, str]:
    """(English, Chinese) instruction to remove object `index` of `scene`; ValueError when the
    object cannot be referred to unambiguously."""
    ref = refer(scene, index)
    if ref is None:
        o = scene.objects[index]
        raise ValueError(f"object {index} ({o.color} {o.shape}) cannot be named unambiguously")
    en = _REMOVE_EN[variant % len(_REMOVE_EN)].format(ref=ref[0])
    return en[0].upper() + en[1:], f"删除{ref[1]}。"


# style -> (instruction, reverse instruction, Chinese instruction, Chinese reverse)
STYLE_TEXT: dict[str, tuple[str, str, str, str]] = {
    "outline": ("Turn the picture into an outline drawing of the shapes.",
                "Fill the outlined shapes with solid colour.",
                "把图片变成只有轮廓线的图形。", "用纯色填充这些轮廓图形。"),
    "pixel_art": ("Turn the image into blocky pixel art.",
                  "Render the pixel art as a smooth, clean image.",
                  "把图像变成像素风格。", "把像素画还原成平滑清晰的图像。"),
    "pastel": ("Give the image a soft pastel look.", "Restore the original vivid colours.",
               "给图像加上柔和的粉彩风格。", "恢复原来鲜艳的颜色。"),
    "inverted": ("Invert the colours of the image.", "Invert the colours of the image back.",
                 "反转图像的颜色。", "把图像的颜色反转回来。"),
    "grayscale": ("Make the image greyscale.", "Restore the colours of the greyscale image.",
                  "把图像变成灰度图。", "恢复灰度图像的颜色。"),
}


def palette_swap_text(a: str, b: str, swap: bool) -> tuple[str, str, str, str]:
    """Instruction texts for swapping colours `a` and `b` (or recolouring `a` as `b` when
    `swap` is False)."""
    za, zb = ZH_COLORS[a], ZH_COLORS[b]
    if swap:
        return (f"Swap the colours: make the {a} shapes {b} and the {b} shapes {a}.",
                f"Swap the colours back: make the {b} shapes {a} and the {a} shapes {b}.",
                f"交换颜色：把{za}的图形变成{zb}，把{zb}的图形变成{za}。",
                f"把颜色换回来：把{zb}的图形变成{za}，把{za}的图形变成{zb}。")
    return (f"Recolour the {a} shapes {b}.", f"Recolour the {b} shapes {a}.",
            f"把{za}的图形改成{zb}。", f"把{zb}的图形改成{za}。")
