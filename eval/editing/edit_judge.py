"""Optional VLM judges of edits: GEdit-Bench's SC / PQ / O and ImgEdit-Bench's three 1-5 criteria.

- Backends: an OpenAI-compatible chat-completions endpoint (`HttpJudge`: URL from `--judge` or
  `$NEXUS_GEN_JUDGE_URL`, key only from `$NEXUS_GEN_JUDGE_KEY` (else `$OPENAI_API_KEY`), never
  written to any output, log or file) or a transformers image-text-to-text model by id
  (`TransformersJudge`, `--judge hf:ID`).
- Prompts are versioned files in `judge_prompts/` (`gedit_sc_v1.txt`, `gedit_pq_v1.txt`: the
  official VIEScore "tie" rubric GEdit-Bench uses; `imgedit_v1.json`: per edit type, in the
  published answer format); a prompt version is its file name plus a hash of its text.
- Calls run concurrently (threads), transient failures (connection errors, HTTP 429 / 5xx) are
  retried with exponential backoff, and every answer is cached by (judge, prompt version, the
  exact prompt text, image hashes), so a rerun asks nothing twice.
- An answer that cannot be read, a refusal, or a call that keeps failing is counted per reason
  and left out of the means; it is never scored (the official GEdit code guesses a random score
  when it cannot parse an answer; we do not)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from PIL import Image

log = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).parent / "judge_prompts"
PROTOCOLS: tuple[str, ...] = ("gedit", "imgedit")
URL_ENV, KEY_ENV, KEY_ENV_FALLBACK, MODEL_ENV = ("NEXUS_GEN_JUDGE_URL", "NEXUS_GEN_JUDGE_KEY",
                                                 "OPENAI_API_KEY", "NEXUS_GEN_JUDGE_MODEL")
DEFAULT_MODEL = "gpt-4.1"  # what GEdit-Bench's scorer calls
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i am unable|i'm unable|unable to (?:help|assist|evaluate))\b",
                      re.IGNORECASE)


class JudgeError(Exception):
    """A judge call that gave no usable answer: `reason` is what gets counted."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.transient = reason, transient


class Unparsable(ValueError):
    """An answer without the scores asked for: `reason` is what gets counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- prompts
@dataclass(frozen=True)
class PromptSet:
    """One protocol's prompts and their version (file names + a hash of their text)."""

    protocol: str
    version: str
    texts: dict[str, str]


def _version(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return "+".join(p.stem for p in paths) + ":" + h.hexdigest()[:12]


def load_prompts(protocol: str, imgedit_file: Optional[Path] = None) -> PromptSet:
    """The prompt set of `gedit` or `imgedit` (`imgedit_file`: another prompts json of the same
    schema, e.g. the official prompts.json: {edit_type: prompt with `<edit_prompt>`})."""
    if protocol == "gedit":
        paths = [PROMPT_DIR / "gedit_sc_v1.txt", PROMPT_DIR / "gedit_pq_v1.txt"]
        return PromptSet("gedit", _version(paths),
                         {"sc": paths[0].read_text(encoding="utf-8"), "pq": paths[1].read_text(encoding="utf-8")})
    if protocol == "imgedit":
        path = Path(imgedit_file) if imgedit_file else PROMPT_DIR / "imgedit_v1.json"
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"ImgEdit prompts {path}: cannot read them as JSON ({e})") from e
        if not isinstance(texts, dict) or not all(isinstance(v, str) for v in texts.values()):
            raise ValueError(f"ImgEdit prompts {path}: expected an object {{edit_type: prompt}}")
        return PromptSet("imgedit", _version([path]), texts)
    raise ValueError(f"judge protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


# -- answers
def parse_gedit_scores(answer: str, n: int = 2) -> list[float]:
    """The score list of a GEdit (VIEScore) answer: the `score` list of the JSON object in it,
    else a bare `[a, b]` list; exactly `n` numbers in 0..10, else `Unparsable` with the reason."""
    if not isinstance(answer, str) or not answer.strip():
        raise Unparsable("empty answer")
    scores: Any = None
    start, end = answer.find("{"), answer.rfind("}")
    if start != -1 and end > start:
        try:
            obj = json.loads(answer[start:end + 1].replace("\n", " "))
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "score" in obj:
            scores = obj["score"]
    if scores is None:
        m = re.search(r"\[\s*(-?\d+(?:\.\d+)?)\s*(?:,\s*(-?\d+(?:\.\d+)?)\s*)*\]", answer)
        if m:
            scores = json.loads(m.group(0))
    if scores is None:
        raise Unparsable("refused" if _REFUSAL.search(answer) else "no score list")
    scores = scores if isinstance(scores, list) else [scores]
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        raise Unparsable("non-numeric score")
    if len(scores) != n:
        raise Unparsable(f"expected {n} scores, got {len(scores)}")
    if not all(0 <= s <= 10 for s in scores):
        raise Unparsable("score out of range 0-10")
    return [float(s) for s in scores]


def parse_imgedit_scores(answer: str, n: int = 3) -> list[int]:
    """The criterion scores of an ImgEdit answer (official reading: lines `Name: N`, N digits);
    exactly `n` of them in 1..5, else `Unparsable` with the reason."""
    from eval.editing.imgedit import SCORE_RANGE, criterion_scores

    if not isinstance(answer, str) or not answer.strip():
        raise Unparsable("empty answer")
    scores = criterion_scores(answer)
    if not scores:
        raise Unparsable("refused" if _REFUSAL.search(answer) else "no criterion scores")
    if len(scores) != n:
        raise Unparsable(f"expected {n} criterion scores, got {len(scores)}")
    lo, hi = SCORE_RANGE
    if not all(lo <= s <= hi for s in scores):
        raise Unparsable(f"score out of range {lo}-{hi}")
    return scores


# -- backends
class JudgeBackend(Protocol):
    judge_id: str

    def ask(self, prompt: str, images: list[bytes]) -> str:
        """The model's answer to a prompt about PNG images (raises JudgeError)."""
        ...


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class HttpJudge:
    """An OpenAI-compatible `/chat/completions` endpoint. The key is read from the environment
    and only ever sent in the Authorization header; `judge_id` names model and host only."""

    def __init__(self, url: str, model: Optional[str] = None, timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"judge URL {url!r}: expected http(s)://host[:port]/v1 of an "
                             "OpenAI-compatible endpoint")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.timeout = timeout
        self._key = os.environ.get(KEY_ENV) or os.environ.get(KEY_ENV_FALLBACK) or ""
        self.judge_id = f"http:{self.model}@{parsed.hostname}"

    def __repr__(self) -> str:  # never the key
        return f"HttpJudge({self.judge_id})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def ask(self, prompt: str, images: list[bytes]) -> str:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for b in images:
            content.append({"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(b).decode("ascii")}})
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": content}],
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise JudgeError(f"http {e.code}", transient=e.code == 429 or e.code >= 500) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise JudgeError(self._scrub(f"connection failed: {reason}"), transient=True) from None
        try:
            msg = json.loads(raw)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError("malformed response body") from None
        if msg.get("refusal"):
            raise JudgeError("refused")
        text = msg.get("content")
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise JudgeError("malformed response body")
        return text


class TransformersJudge:
    """A transformers image-text-to-text model (Qwen2.5-VL class) by hub id or folder, greedy."""

    def __init__(self, model_id: str, device: str = "cpu", max_new_tokens: int = 256) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_id)
            self.model = AutoModelForImageTextToText.from_pretrained(model_id).to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load judge model {model_id!r} (offline and not cached?): {e}") from e
        self.device, self.max_new_tokens, self._torch = device, max_new_tokens, torch
        self.judge_id = f"hf:{model_id}"
        self._lock = threading.Lock()  # one generate at a time per model

    def ask(self, prompt: str, images: list[bytes]) -> str:
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        messages = [{"role": "user", "content": [{"type": "image"} for _ in pil] + [{"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=pil or None, return_tensors="pt").to(self.device)
        with self._lock, self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def build_judge(spec: str, model: Optional[str] = None, device: str = "cpu") -> JudgeBackend:
    """`hf:ID` (a transformers VLM) or an http(s) URL (`env` / empty: `$NEXUS_GEN_JUDGE_URL`)."""
    if spec.startswith("hf:"):
        return TransformersJudge(spec[3:], device=device)
    url = os.environ.get(URL_ENV, "") if spec in ("", "env") else spec
    if not url:
        raise ValueError(f"--judge env: ${URL_ENV} is not set; pass the endpoint URL or hf:MODEL_ID")
    return HttpJudge(url, model)


# -- cache, retries, concurrency
class AnswerCache:
    """Judge answers on disk (jsonl, append-only), keyed by judge, prompt version, prompt text
    and image hashes. Only answer texts are cached (unparsable ones too: asking again would not
    be the same judge run); failed calls and API refusals are asked again next run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mem: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._mem[row["key"]] = row["answer"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of an interrupted run: asked again

    @staticmethod
    def key(judge_id: str, version: str, prompt: str, images: list[bytes]) -> str:
        parts = [judge_id, version, hashlib.sha256(prompt.encode()).hexdigest(),
                 *[hashlib.sha256(b).hexdigest() for b in images]]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def get(self, key: str) -> Optional[str]:
        return self._mem.get(key)

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self._mem[key] = answer
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")


@dataclass
class Judging:
    """How to judge: a backend, its cache, retries (`retries` extra attempts of a transient
    failure, waiting `backoff * 2**k` seconds) and the number of concurrent items."""

    backend: JudgeBackend
    cache: AnswerCache
    retries: int = 3
    backoff: float = 1.0
    concurrency: int = 4
    sleep: Callable[[float], None] = time.sleep
    calls: int = field(default=0, init=False)

    def ask(self, version: str, prompt: str, images: list[bytes]) -> str:
        key = AnswerCache.key(self.backend.judge_id, version, prompt, images)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        for attempt in range(self.retries + 1):
            try:
                self.calls += 1
                answer = self.backend.ask(prompt, images)
                break
            except JudgeError as e:
                if not e.transient or attempt == self.retries:
                    raise
                wait = self.backoff * (2 ** attempt)
                log.info("judge call failed (%s); retry %d/%d in %.2fs", e.reason, attempt + 1,
                         self.retries, wait)
                self.sleep(wait)
        self.cache.put(key, answer)
        return answer


def _fail(row: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    row.update(status=status, reason=reason)
    return row


def judge_gedit(j: Judging, prompts: PromptSet, item_id: str, instruction: str,
                source: Image.Image, edited: Image.Image) -> dict[str, Any]:
    """One GEdit judgment: SC from (source, edited resized to the source size) and the
    instruction, PQ from the edited image alone; SC / PQ = min of each list, O = sqrt(SC * PQ)."""
    from eval.editing.gedit import item_scores

    row: dict[str, Any] = {"id": item_id, "protocol": "gedit", "prompt_version": prompts.version}
    src, ed = png_bytes(source), png_bytes(edited.convert("RGB").resize(source.size))
    answers: dict[str, str] = {}
    try:
        answers["sc"] = j.ask(prompts.version, prompts.texts["sc"].replace("<instruction>", instruction), [src, ed])
        answers["pq"] = j.ask(prompts.version, prompts.texts["pq"], [ed])
    except JudgeError as e:
        return _fail({**row, "answers": answers}, "refused" if e.reason == "refused" else "failed", e.reason)
    row["answers"] = answers
    try:
        sc = parse_gedit_scores(answers["sc"])
        pq = parse_gedit_scores(answers["pq"])
    except Unparsable as e:
        return _fail(row, "refused" if e.reason == "refused" else "unparsable", e.reason)
    s, p, o = item_scores(sc, pq)
    row.update(status="ok", reason=None, sc_scores=sc, pq_scores=pq, SC=s, PQ=p, O=o)
    return row


def judge_imgedit(j: Judging, prompts: PromptSet, item_id: str, instruction: str, edit_type: str,
                  source: Image.Image, edited: Image.Image) -> dict[str, Any]:
    """One ImgEdit judgment: the edit type's prompt (else `default`) with `<edit_prompt>` filled,
    the source and the edited image; score = mean of the three criteria (2 places)."""
    from eval.editing.imgedit import item_score

    row: dict[str, Any] = {"id": item_id, "protocol": "imgedit", "prompt_version": prompts.version,
                           "edit_type": edit_type}
    template = prompts.texts.get(edit_type) or prompts.texts.get("default")
    if template is None:
        return _fail(row, "failed", f"no prompt for edit type {edit_type!r}")
    try:
        answer = j.ask(prompts.version, template.replace("<edit_prompt>", instruction),
                       [png_bytes(source), png_bytes(edited)])
    except JudgeError as e:
        return _fail(row, "refused" if e.reason == "refused" else "failed", e.reason)
    row["answers"] = {"answer": answer}
    try:
        scores = parse_imgedit_scores(answer)
    except Unparsable as e:
        return _fail(row, "refused" if e.reason == "refused" else "unparsable", e.reason)
    row.update(status="ok", reason=None, scores=scores, score=item_score(scores))
    return row


def run_judgments(j: Judging, tasks: Iterable[Callable[[], dict[str, Any]]], total: int,
                  desc: str = "judge") -> list[dict[str, Any]]:
    """Run judgment tasks `concurrency` at a time (results in task order), with a progress bar."""
    from tqdm import tqdm

    tasks = list(tasks)
    with ThreadPoolExecutor(max_workers=max(1, j.concurrency)) as pool, \
            tqdm(total=total, desc=desc, unit="edit", disable=None) as bar:
        futures = [pool.submit(t) for t in tasks]
        out = []
        for f in futures:
            out.append(f.result())
            bar.update(1)
    return out


def count_outcomes(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Judgments by status, and the not-scored ones by `status: reason`."""
    by_status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        if r["status"] != "ok":
            k = f"{r['status']}: {r['reason']}"
            reasons[k] = reasons.get(k, 0) + 1
    return {"by_status": by_status, "not_scored": dict(sorted(reasons.items()))}
