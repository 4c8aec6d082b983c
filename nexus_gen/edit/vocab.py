"""The word lists of real-image edits, kept as versioned tab-separated files in
datasets_spec/vocab/ (a recipe may name its own): the object vocabulary grounded add / remove
detect and inpaint, and the named styles of style transfer, each with English and Chinese names.
Lines starting with `#` and blank lines are comments."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

VOCAB_DIR = Path(__file__).resolve().parents[2] / "datasets_spec" / "vocab"
OBJECTS_FILE, STYLES_FILE = VOCAB_DIR / "objects.tsv", VOCAB_DIR / "styles.tsv"


class VocabError(ValueError):
    """A word list that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Word:
    en: str
    zh: str


@dataclass(frozen=True)
class Style:
    key: str
    en: str
    zh: str
    prompt: str


def _rows(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabError(f"word list {path}: cannot read it ({exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) != fields or not all(cols):
            raise VocabError(f"word list {path}:{n}: expected {fields} non-empty tab-separated "
                             f"fields, got {len(cols)}: {line!r}")
        rows.append((n, cols))
    if not rows:
        raise VocabError(f"word list {path}: no entries")
    return rows


def _unique(path: Path, keys: list[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for n, k in keys:
        if k in seen:
            raise VocabError(f"word list {path}:{n}: {k!r} repeats line {seen[k]}")
        seen[k] = n


def load_objects(path: Optional[Path] = None) -> tuple[Word, ...]:
    """Objects (en, zh) from `path` (default: the shipped list)."""
    path = Path(path or OBJECTS_FILE)
    rows = _rows(path, 2)
    _unique(path, [(n, c[0].lower()) for n, c in rows])
    return tuple(Word(*c) for _, c in rows)


def load_styles(path: Optional[Path] = None) -> tuple[Style, ...]:
    """Named styles (key, en, zh, prompt) from `path` (default: the shipped list)."""
    path = Path(path or STYLES_FILE)
    rows = _rows(path, 4)
    _unique(path, [(n, c[0]) for n, c in rows])
    return tuple(Style(*c) for _, c in rows)
