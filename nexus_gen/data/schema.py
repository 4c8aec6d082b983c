"""The unified sample's two schemas: the JSON Schema in `datasets_spec/` (the contract) and the
parquet/arrow schema with Hugging Face features in its metadata (how shards store it)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

SPEC_DIR = Path(__file__).resolve().parents[2] / "datasets_spec"
SCHEMA_PATH = SPEC_DIR / "unified_sample.schema.json"
FIELDS = ("id", "source", "task", "language", "messages", "images", "meta")
TASKS = ("understanding", "generation", "editing")


@lru_cache(maxsize=1)
def json_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _string() -> dict[str, str]:
    return {"dtype": "string", "_type": "Value"}


def hf_features() -> dict[str, Any]:
    """Features in the list form that every `datasets` version reads (2.x to 5.x): a Python
    list means a sequence; images are `Image` features so they decode to PIL."""
    return {
        "id": _string(),
        "source": _string(),
        "task": _string(),
        "language": _string(),
        "messages": [{"role": _string(), "content": _string()}],
        "images": [{"_type": "Image"}],
        "meta": _string(),
    }


@lru_cache(maxsize=1)
def arrow_schema() -> pa.Schema:
    """Parquet schema of a shard; `meta` is a JSON string (free-form lineage and scores)."""
    schema = pa.schema([
        ("id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("language", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("meta", pa.string()),
    ])
    hf = json.dumps({"info": {"features": hf_features()}}, ensure_ascii=False)
    return schema.with_metadata({"huggingface": hf})
