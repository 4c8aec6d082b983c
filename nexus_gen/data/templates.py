"""The reference system's conversation templates (NEXUS_GEN.md, "Unified data format"), and the
inverse: recognising task and language from a conversation."""
from __future__ import annotations

import re

IMAGE_TAG = "<image>"
SYSTEM_PROMPT = "You are a helpful assistant."

GEN_USER = {
    "en": "Generate an image according to the following description: {prompt}",
    "zh": "根据以下描述生成一张图像：{prompt}",
}
GEN_ASSISTANT = {
    "en": "Here is an image based on the description: <image>",
    "zh": "这是根据您的描述生成的图像：<image>",
}
EDIT_USER = "<image> {instruction}"
EDIT_ASSISTANT = {"en": "Here is the image: <image>", "zh": "以下为编辑后的图像：<image>"}
UND_USER = "<image>\n{question}"

LANGUAGES = ("en", "zh")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} has no template; choose one of {LANGUAGES}")


def generation_messages(prompt: str, language: str = "en") -> list[dict[str, str]]:
    _check_language(language)
    return [
        {"role": "user", "content": GEN_USER[language].format(prompt=prompt)},
        {"role": "assistant", "content": GEN_ASSISTANT[language]},
    ]


def editing_messages(instruction: str, language: str = "en") -> list[dict[str, str]]:
    _check_language(language)
    return [
        {"role": "user", "content": EDIT_USER.format(instruction=instruction)},
        {"role": "assistant", "content": EDIT_ASSISTANT[language]},
    ]


def understanding_messages(question: str, answer: str, *more: tuple[str, str]) -> list[dict[str, str]]:
    """An understanding conversation: the image and `question` in the first user turn, `answer`;
    then each further (question, answer) pair as a turn about the same image."""
    out = [
        {"role": "user", "content": UND_USER.format(question=question)},
        {"role": "assistant", "content": answer},
    ]
    for q, a in more:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def count_tags(text: str) -> int:
    return text.count(IMAGE_TAG)


def detect_language(messages: list[dict[str, str]]) -> str:
    """'zh' if the user turns hold CJK characters, else 'en'."""
    text = "".join(m.get("content", "") for m in messages if m.get("role") == "user")
    return "zh" if _CJK.search(text) else "en"


def detect_task(messages: list[dict[str, str]]) -> str:
    """Task from where the `<image>` tags stand: an image in an assistant turn means generation
    (no image in user turns) or editing (images in user turns too); else understanding."""
    user_tags = sum(count_tags(m["content"]) for m in messages if m["role"] == "user")
    asst_tags = sum(count_tags(m["content"]) for m in messages if m["role"] == "assistant")
    if asst_tags == 0:
        return "understanding"
    return "editing" if user_tags > 0 else "generation"


def strip_tags(text: str) -> str:
    """The text of a turn without its `<image>` placeholders."""
    return text.replace(IMAGE_TAG, "").strip()


def generation_prompt(user_text: str) -> str:
    """The description inside a generation request (the template removed when it is ours)."""
    for tmpl in GEN_USER.values():
        head = tmpl.split("{prompt}")[0]
        if user_text.startswith(head):
            return user_text[len(head):].strip()
    return strip_tags(user_text)
