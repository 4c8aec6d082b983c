"""Scenes world: captions and instructions, English and Chinese."""
from __future__ import annotations

import pytest

from nexus_gen.scenes import Background, Scene, SceneObject
from nexus_gen.scenes.text import (add_instruction, caption, caption_zh, count_phrase, refer,
                                   remove_instruction)

RED_A = SceneObject("circle", "red", 0.2, 0.2, 0.1)
RED_B = SceneObject("circle", "red", 0.8, 0.8, 0.1)
BLUE = SceneObject("star", "blue", 0.5, 0.5, 0.1)


def test_caption_counts_groups_in_order_of_appearance():
    scene = Scene((RED_A, BLUE, RED_B), Background("plain", "grey"))
    assert caption(scene) == "two red circles and a blue star on a grey background"
    assert caption_zh(scene) == "灰色背景上有两个红色圆形和一个蓝色星形"


def test_caption_backgrounds_articles_and_lists():
    orange = SceneObject("cross", "orange", 0.5, 0.2, 0.1)
    scene = Scene((orange, BLUE, RED_A, RED_B, SceneObject("cross", "orange", 0.2, 0.8, 0.1)),
                  Background("gradient", "grey", "beige", angle=90))
    assert caption(scene) == ("two orange crosses, a blue star and two red circles "
                              "on a grey to beige gradient background")
    assert caption_zh(scene) == "从灰色渐变到米色的背景上有两个橙色十字形、一个蓝色星形和两个红色圆形"
    tex = Scene((orange,), Background("texture", "slate", texture="striped"))
    assert caption(tex) == "an orange cross on a striped slate background"
    assert caption(Scene()) == "an empty grey background"
    assert count_phrase(3, "heart") == "three hearts"
    with pytest.raises(ValueError, match="count 0"):
        count_phrase(0, "heart")


def test_referring_expressions_disambiguate_by_region():
    scene = Scene((RED_A, BLUE, RED_B))
    assert refer(scene, 1) == ("the blue star", "蓝色星形")
    assert refer(scene, 0) == ("the red circle in the top left corner", "左上角的红色圆形")
    assert refer(scene, 2) == ("the red circle in the bottom right corner", "右下角的红色圆形")
    twins = Scene((RED_A, SceneObject("circle", "red", 0.1, 0.1, 0.05)))
    assert refer(twins, 0) is None
    with pytest.raises(ValueError, match="cannot be named"):
        remove_instruction(twins, 0)


def test_add_and_remove_instructions():
    assert add_instruction(BLUE) == ("Add a blue star in the centre.", "在中央添加一个蓝色星形。")
    assert remove_instruction(Scene((RED_A, BLUE)), 0, variant=1) == (
        "Delete the red circle.", "删除红色圆形。")
