"""Edit instructions (forward and reverse) and the source and target captions written by a VLM by
id (Qwen2.5-VL class through transformers; `tiny`: a random-init one built locally) from
versioned prompt files, validated, with the template as the fallback. Invalid output is counted
per reason (empty, too long, wrong language, the object not mentioned, the model raising), so a
run record shows how often the VLM was usable."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "datasets_spec" / "prompts"
PROMPT_VERSION = "v1"
PROMPT_FILE = PROMPTS_DIR / f"edit_instruction.{PROMPT_VERSION}.txt"
CAPTION_PROMPT_VERSION = "v1"
CAPTION_PROMPT_FILE = PROMPTS_DIR / f"caption.{CAPTION_PROMPT_VERSION}.txt"
PROMPT_FILES = {"instruction": PROMPT_FILE, "caption": CAPTION_PROMPT_FILE}
MAX_CHARS = {"en": 160, "zh": 60}
CAPTION_MAX_CHARS = {"en": 300, "zh": 120}
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}
MAX_NEW_TOKENS = 48
_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
FALLBACK_REASONS = ("empty", "too_long", "wrong_language", "no_object", "vlm_error")


def load_prompt(path: Path = PROMPT_FILE) -> str:
    """The prompt template (comment lines dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return "\n".join(x for x in lines if not x.startswith("#")).strip()


def invalid_reason(text: Optional[str], language: str, mention: Sequence[str],
                   max_chars: Optional[dict[str, int]] = None) -> Optional[str]:
    """Why a written text cannot be used (None: it can): `empty`, `too_long` (over `max_chars`,
    by default the instruction's limits),
    `wrong_language` (Chinese without Chinese characters; English with any, or without Latin
    letters), `no_object` (none of `mention` in it, case-insensitive)."""
    t = (text or "").strip()
    if not t:
        return "empty"
    if len(t) > (max_chars or MAX_CHARS)[language]:
        return "too_long"
    cjk = len(_CJK.findall(t))
    if (language == "zh" and cjk == 0) or (language == "en" and (cjk > 0 or not _LATIN.search(t))):
        return "wrong_language"
    low = t.lower()
    if mention and not any(m.lower() in low for m in mention if m):
        return "no_object"
    return None


class VLMWriter:
    """A VLM that writes one instruction or caption for an image (greedy decoding: deterministic)."""

    def __init__(self, source: str, model_id: str, device: str, dtype) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(source)
        self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.model_id = device, dtype, model_id
        self.prompts = {kind: load_prompt(p) for kind, p in PROMPT_FILES.items()}

    def write(self, image, task: str, language: str, mention: str, prompt: str = "instruction") -> str:
        """The VLM's reply to the `prompt` kind (instruction, caption) about `image`."""
        import torch

        text = self.prompts[prompt].format(task=task, language=LANGUAGE_NAMES[language], mention=mention)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        chat = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = self.processor(text=[chat], images=[image], return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def written_instruction(writer: Optional[Any], image, task: str, template: dict[str, Optional[str]],
                        mention: dict[str, str], kind: str = "instruction"
                        ) -> tuple[dict[str, Optional[str]], dict[str, str]]:
    """The instruction (`kind` caption: the caption) in each language of `template`: the VLM's
    when valid, else the template. `mention`: per language, the word the text must contain (a
    caption may have none). Returns (texts, source per language: `vlm` or `template:<reason>`)."""
    texts, by = {}, {}
    for lang, fallback in template.items():
        if writer is None:
            texts[lang], by[lang] = fallback, "template"
            continue
        must = mention.get(lang) or ""
        try:
            if kind == "caption":
                ask = f'The caption must mention "{must}".' if must else ""
                got = writer.write(image, ask, lang, must, prompt="caption")
            else:
                got = writer.write(image, task, lang, must)
            why = invalid_reason(got, lang, [must] if must else [],
                                 CAPTION_MAX_CHARS if kind == "caption" else MAX_CHARS)
        except Exception:  # a VLM failing on one item: the template, counted
            got, why = None, "vlm_error"
        texts[lang], by[lang] = (got.strip(), "vlm") if why is None else (fallback, f"template:{why}")
    return texts, by
