"""Understanding benchmark items and their readers.

One `Item` per question, whatever the source: a VLMEvalKit TSV, a Hugging Face parquet table (the
lmms-eval datasets' layout), the scenes QA generated on the fly, or the understanding samples of
unified shards written by `nexus-gen build` (their meta holds `qa`).

VLMEvalKit TSV rules (its `ImageBaseDataset`): read with `sep='\\t'`; `index` is the row key; an
`image` cell of 64 characters or fewer (and not empty) is the `index` of another row whose image
it reuses, and that row's cell must be a real image (longer than 64); a cell starting with '['
is a list of images; MME carries `image_path`, which pairs the two questions of each image; the
multiple-choice prompt is `Hint: ...` (if any), `Question: ...`, `Options:` with one `X. text` line
per non-empty option column, then `Please select the correct answer from the options above.`;
circular MMBench rows share the group `int(index % 1e6)` and the row whose index equals it is the
group's main row.

A row that cannot be run (broken base64, an image reference to nowhere, an answer that is not an
option) becomes an item with `error` set: it stays in the denominator, is scored wrong and is
counted by reason. A table missing a required column is a clear error before any work."""
from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

BENCHMARKS = ("scenes", "mme", "pope", "mmbench", "mc")
YESNO_BENCHMARKS = ("mme", "pope")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VLMEVAL_MC_SUFFIX = "Please select the correct answer from the options above. \n"
LMMS_MC_SUFFIX = "Answer with the option's letter from the given choices directly."
_REQUIRED = {
    "mme": ("index", "image", "question", "answer", "category"),
    "pope": ("index", "image", "question", "answer", "category"),
    "mmbench": ("index", "image", "question", "A", "B", "answer"),
    "mc": ("index", "question", "A", "B", "answer"),
}


@dataclass
class Item:
    """One question. `kind` is 'yesno' (answer 'yes' / 'no') or 'mc' (answer an option letter);
    `group` pairs MME questions (its image) or gathers circular MMBench rotations; `split` is the
    POPE split; `error` says why the item cannot be run (it is then scored wrong, with that
    reason). `images` are encoded image files (PNG / JPEG bytes)."""

    id: str
    prompt: str
    answer: str
    kind: str
    images: list[bytes] = field(default_factory=list, repr=False)
    choices: dict[str, str] = field(default_factory=dict)
    category: str = ""
    group: str = ""
    split: str = ""
    yesno_style: str = "mme"
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def record(self) -> dict[str, Any]:
        """The item without its images (for items.jsonl: re-scoring needs no images)."""
        d = asdict(self)
        d.pop("images")
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Item":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "images"}
        return cls(**known)


class TableError(ValueError):
    """A benchmark table that cannot be read at all (missing file or column, bad index)."""


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str:
    return "" if _isna(v) else str(v)


def decode_image_cell(cell: str) -> bytes:
    """Base64 text -> image bytes that PIL can open; ValueError saying which step failed."""
    from PIL import Image

    try:
        data = base64.b64decode("".join(cell.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"broken base64 ({e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for a bad file
        raise ValueError(f"base64 decodes but is not an image ({type(e).__name__})") from None
    return data


def _as_list(cell: str) -> list[str]:
    """VLMEvalKit's `toliststr`: a cell '[...]' is a list literal, anything else one value."""
    if cell.startswith("[") and cell.endswith("]"):
        try:
            v = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            return [cell]
        if isinstance(v, list):
            return [str(x) for x in v]
    return [cell]


def _missing(columns: Iterable[str], benchmark: str, name: str, have_image: bool = True) -> None:
    cols = set(columns)
    need = [c for c in _REQUIRED[benchmark] if c not in cols and not (c == "image" and not have_image)]
    if need:
        raise TableError(
            f"{name}: missing column(s) {', '.join(repr(c) for c in need)}; a {benchmark} table "
            f"needs {', '.join(_REQUIRED[benchmark])} (VLMEvalKit TSV / parquet layout): "
            f"check the file or the --benchmark")


def vlmevalkit_mc_prompt(question: str, choices: dict[str, str], hint: str = "") -> str:
    """VLMEvalKit's multiple-choice prompt (ImageMCQDataset.build_prompt)."""
    p = f"Hint: {hint}\n" if hint else ""
    p += f"Question: {question}\n"
    if choices:
        p += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in choices.items()) + VLMEVAL_MC_SUFFIX
    return p


def lmms_mc_prompt(question: str, choices: dict[str, str]) -> str:
    """The lmms-eval / LLaVA multiple-choice prompt (SEED-Bench's)."""
    return question + "\n" + "\n".join(f"{k}. {v}" for k, v in choices.items()) + "\n" + LMMS_MC_SUFFIX


def _answer(benchmark: str, raw: Any, choices: dict[str, str]) -> tuple[str, str]:
    """(normalised answer, error)."""
    a = _text(raw).strip()
    if benchmark in YESNO_BENCHMARKS:
        low = a.lower().replace(".", "")
        if low in ("yes", "no"):
            return low, ""
        return a, f"answer {a!r} is not yes / no"
    up = a.upper()
    if up in choices:
        return up, ""
    return a, f"answer {a!r} is not one of the options {''.join(choices)}"


def _circular_group(index: str, name: str) -> str:
    try:
        value = float(index)
    except ValueError:
        raise TableError(f"{name}: index {index!r} is not a number; circular MMBench needs integer "
                         f"indices (rotations share int(index % 1e6))") from None
    if value != int(value):
        raise TableError(f"{name}: index {index!r} is not an integer (circular groups need integers)")
    return str(int(value % 1e6))


def read_tsv(path: Path, benchmark: str) -> list[Item]:
    """Items of a VLMEvalKit TSV (see the module docstring for the rules)."""
    import pandas as pd

    if benchmark not in _REQUIRED:
        raise TableError(f"{path}: a TSV holds mme, pope, mmbench or mc, not {benchmark!r}")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise TableError(f"{path}: not a readable TSV ({e})") from None
    _missing(df.columns, benchmark, str(path), have_image=benchmark == "mc" and "image" not in df)
    rows = df.to_dict("records")
    index = [_text(r["index"]).strip() for r in rows]
    dup = sorted({i for i in index if index.count(i) > 1}) if len(set(index)) != len(index) else []
    if dup:
        raise TableError(f"{path}: duplicate index value(s) {', '.join(dup[:5])}: each row needs its own index")
    cells = {i: _text(r.get("image")) for i, r in zip(index, rows)}
    items = []
    for i, r in zip(index, rows):
        choices = {c: _text(r[c]) for c in LETTERS if c in r and not _isna(r[c])}
        kind = "yesno" if benchmark in YESNO_BENCHMARKS else "mc"
        answer, error = _answer(benchmark, r["answer"], choices if kind == "mc" else {})
        images, img_key = [], ""
        cell = cells[i]
        if cell and not error:
            if len(cell) <= 64:
                ref = cell.strip()
                if ref not in cells:
                    error = f"image: refers to index {ref!r}, which is not in the table"
                elif len(cells[ref]) <= 64:
                    error = f"image: refers to index {ref!r}, whose image cell is itself a reference"
                else:
                    cell = cells[ref]
            if not error:
                img_key = cell[:64] + str(len(cell))
                try:
                    images = [decode_image_cell(c) for c in _as_list(cell)]
                except ValueError as e:
                    error = f"image: {e}"
        question = _text(r["question"])
        prompt = question if kind == "yesno" else vlmevalkit_mc_prompt(
            question, choices, _text(r.get("hint")))
        item = Item(id=i, prompt=prompt, answer=answer, kind=kind, images=images, choices=choices,
                    category=_text(r.get("category")), error=error,
                    yesno_style="pope" if benchmark == "pope" else "mme",
                    meta={k: _text(r[k]) for k in ("l2-category", "image_path", "hint") if k in r})
        if not cell:
            item.meta["no_image"] = True
        pair = _text(r.get("image_path")) if "image_path" in r else img_key
        items.append(_grouped(item, benchmark, pair, str(path)))
    return items


def _grouped(item: Item, benchmark: str, mme_pair: str, name: str) -> Item:
    """Set the item's MME pair key, POPE split (its category) or circular group."""
    if benchmark == "mme":
        item.group = mme_pair
    elif benchmark == "pope":
        item.split = item.category
    elif benchmark == "mmbench":
        item.group = _circular_group(item.id, name)
    return item


# -- parquet (the Hugging Face / lmms-eval layout)
def _image_bytes(v: Any) -> list[bytes]:
    if _isna(v):
        return []
    if isinstance(v, dict):
        b = v.get("bytes")
        if b is None and v.get("path"):
            return [Path(v["path"]).read_bytes()]
        return [b] if b is not None else []
    if isinstance(v, (bytes, bytearray)):
        return [bytes(v)]
    if isinstance(v, str):
        return [decode_image_cell(c) for c in _as_list(v)]
    if isinstance(v, (list, tuple)):
        return [b for x in v for b in _image_bytes(x)]
    raise ValueError(f"unsupported image cell of type {type(v).__name__}")


def _pick(cols: Iterable[str], *names: str) -> Optional[str]:
    have = set(cols)
    return next((n for n in names if n in have), None)


def read_parquet(path: Path, benchmark: str) -> list[Item]:
    """Items of a parquet table or folder of tables in the Hugging Face layout: ids from
    `index` / `id` / `question_id` (row numbers when not unique, e.g. lmms-eval's MME whose
    `question_id` names the image and so pairs its two questions), options from `A`.. columns,
    `choice_a`.. columns (SEED) or an `options` list (MMMU), images from `image` (struct with
    bytes, raw bytes or base64) or `image_1`...; POPE's split is `category`."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise TableError(f"{path}: no .parquet files")
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            rows += pq.read_table(f).to_pylist()
        except Exception as e:
            raise TableError(f"{f}: not a readable parquet file ({e})") from None
    cols = list(rows[0]) if rows else []
    id_col = _pick(cols, "index", "id", "question_id")
    img_cols = [c for c in cols if c == "image" or re.fullmatch(r"image_\d+", c)]
    if benchmark == "mc" and "options" in cols:
        cols_for_check = cols + ["A", "B"]
    elif benchmark in ("mc", "mmbench") and "choice_a" in cols:
        cols_for_check = cols + ["A", "B"]
    else:
        cols_for_check = cols
    if id_col:
        cols_for_check = cols_for_check + ["index"]
    _missing(cols_for_check + (["image"] if img_cols else []), benchmark, str(path),
             have_image=benchmark == "mc")
    ids = [_text(r[id_col]) for r in rows]
    unique = len(set(ids)) == len(ids)
    items = []
    for n, r in enumerate(rows):
        if "options" in r and not any(c in r for c in ("A", "choice_a")):
            opts = r["options"]
            if isinstance(opts, str):
                try:
                    opts = ast.literal_eval(opts)
                except (ValueError, SyntaxError):
                    opts = []
            choices = {LETTERS[k]: str(o) for k, o in enumerate(opts or [])}
        elif "choice_a" in r:
            choices = {L: _text(r[f"choice_{L.lower()}"]) for L in "ABCD" if f"choice_{L.lower()}" in r
                       and not _isna(r[f"choice_{L.lower()}"])}
        else:
            choices = {c: _text(r[c]) for c in LETTERS if c in r and not _isna(r[c])}
        kind = "yesno" if benchmark in YESNO_BENCHMARKS else "mc"
        answer, error = _answer(benchmark, r.get("answer"), choices if kind == "mc" else {})
        if kind == "mc" and r.get("question_type") not in (None, "multiple-choice"):
            error = f"question_type {r.get('question_type')!r} is not multiple-choice"
        images = []
        if not error:
            try:
                images = [b for c in img_cols for b in _image_bytes(r[c])]
            except (ValueError, OSError) as e:
                error = f"image: {e}"
        question = _text(r.get("question"))
        iid = ids[n] if unique else str(n)
        prompt = question if kind == "yesno" else (
            vlmevalkit_mc_prompt(question, choices, _text(r.get("hint"))) if benchmark == "mmbench"
            else lmms_mc_prompt(question, choices))
        item = Item(id=iid, prompt=prompt, answer=answer, kind=kind, images=images, choices=choices,
                    category=_text(r.get("category") or r.get("data_type") or ""), error=error,
                    yesno_style="pope" if benchmark == "pope" else "mme")
        pair = _text(r.get("image_path") or r.get("question_id") or "")
        items.append(_grouped(item, benchmark, pair, str(path)))
    return items


# -- scenes
_OPTION_LINE = re.compile(r"^([A-D])\. (.*)$")


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _scenes_item(iid: str, q: Any, image: bytes, source: str) -> Item:
    return Item(id=iid, prompt=q.question, answer=q.answer, kind="mc" if q.format == "mc" else "yesno",
                images=[image], choices={"ABCD"[k]: c for k, c in enumerate(q.choices or [])},
                category=q.kind, split=q.meta.get("split", "") if q.kind == "presence" else "",
                yesno_style="pope" if q.kind == "presence" else "mme",
                meta={"source": source, "answer_text": q.answer_text})


def generate_scenes(n_scenes: int, seed: int = 0, size: int = 64) -> list[Item]:
    """The scenes QA over `n_scenes` random scenes (exact answers), the same for the same seed."""
    from nexus_gen.scenes.qa import scene_qa
    from nexus_gen.scenes.render import render
    from nexus_gen.scenes.scene import random_scene

    items = []
    for s in range(n_scenes):
        scene = random_scene(seed + s, max_objects=4)
        image = _png(render(scene, size).image)
        for k, q in enumerate(scene_qa(scene, size, seed=seed + s)):
            items.append(_scenes_item(f"s{seed + s:05d}-q{k:03d}", q, image, "scenes"))
    return items


def read_shards(path: Path) -> list[Item]:
    """Understanding samples of unified shards (`nexus-gen build` output): the question is the
    user turn without its `<image>` tag, the answer the assistant turn, `meta.qa` says the kind
    and format; multiple-choice options are read back from the question's 'X. text' lines."""
    from nexus_gen.data.shards import iter_samples
    from nexus_gen.data.templates import IMAGE_TAG

    items = []
    try:
        samples = list(iter_samples(path))
    except FileNotFoundError as e:
        raise TableError(f"{path}: {e}") from None
    for s in samples:
        qa = (s.get("meta") or {}).get("qa")
        if s.get("task") != "understanding" or not isinstance(qa, dict):
            continue
        user = next((m["content"] for m in s["messages"] if m["role"] == "user"), "")
        answer = next((m["content"] for m in s["messages"] if m["role"] == "assistant"), "").strip()
        question = user.replace(IMAGE_TAG, "", 1).lstrip("\n")
        choices = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, question.splitlines()) if m}
        fmt = qa.get("format")
        error = ""
        if fmt == "mc" and answer not in choices:
            error = f"answer {answer!r} is not one of the options {''.join(choices)}"
        elif fmt == "yesno" and answer not in ("yes", "no"):
            error = f"answer {answer!r} is not yes / no"
        images = [im["bytes"] for im in s.get("images") or [] if im.get("bytes")]
        items.append(Item(id=s["id"], prompt=question, answer=answer,
                          kind="mc" if fmt == "mc" else "yesno", images=images, choices=choices,
                          category=str(qa.get("kind", "")), error=error,
                          split=str(qa.get("split", "")) if qa.get("kind") == "presence" else "",
                          yesno_style="pope" if qa.get("kind") == "presence" else "mme",
                          meta={"source": s.get("source", ""), "answer_text": qa.get("answer_text")}))
    if not items:
        raise TableError(f"{path}: no understanding samples with meta.qa (build with understanding outputs)")
    return items


def parse_scenes_spec(spec: str) -> tuple[int, int]:
    """'scenes:N' or 'scenes:N:SEED' -> (N, SEED)."""
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise TableError(f"--data {spec!r}: expected scenes:N or scenes:N:SEED") from None
    if n < 1 or len(parts) > 3:
        raise TableError(f"--data {spec!r}: expected scenes:N (N >= 1) or scenes:N:SEED")
    return n, seed


def load_items(benchmark: str, data: str) -> list[Item]:
    """Every item of a benchmark's data: a TSV, a parquet file / folder, for scenes a
    `scenes:N[:SEED]` spec or a folder of build shards."""
    if benchmark not in BENCHMARKS:
        raise TableError(f"unknown benchmark {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    if benchmark == "scenes":
        if data.startswith("scenes:"):
            n, seed = parse_scenes_spec(data)
            return generate_scenes(n, seed)
        p = Path(data)
        if not p.exists():
            raise TableError(f"--data {data}: does not exist (give a build output folder or scenes:N)")
        return read_shards(p)
    p = Path(data)
    if not p.exists():
        raise TableError(f"--data {data}: does not exist")
    if p.suffix == ".tsv":
        items = read_tsv(p, benchmark)
    elif p.suffix == ".parquet" or p.is_dir():
        items = read_parquet(p, benchmark)
    else:
        raise TableError(f"--data {data}: expected a .tsv (VLMEvalKit) or .parquet file / folder")
    if not items:
        raise TableError(f"--data {data}: the table has no rows")
    return items


def select(items: list[Item], limit: Optional[int]) -> list[Item]:
    """The first `limit` items in table order, never splitting a group (an MME image's two
    questions, a circular question's rotations): whole groups are taken until `limit` is
    reached, so a subset may hold slightly more items than asked."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    groups: dict[str, list[Item]] = {}
    order: list[str] = []
    for it in items:
        key = it.group or f"\0{it.id}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(it)
    out: list[Item] = []
    for key in order:
        if len(out) >= limit:
            break
        out += groups[key]
    return out


def write_items(items: list[Item], path: Path) -> None:
    """items.jsonl: every item without images, what re-scoring reads."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.record(), ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)


def read_items(path: Path) -> list[Item]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the run's items.jsonl (written by "
                                f"`nexus-gen eval understanding`)")
    return [Item.from_record(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
