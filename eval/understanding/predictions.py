"""Saved predictions: one JSON object per line, `{"id", "prediction", "model", "prompt"}`.

Re-scoring reads them without a model. What a file can get wrong and what happens:
- a line that is not a JSON object, or lacks `id` / `prediction`: an error naming the line;
- a duplicate id: an error (which of the two answers to score is not ours to guess);
- an id the benchmark does not have: an error (most likely predictions of another benchmark);
- a benchmark item without a prediction: counted as 'missing prediction' and scored wrong, the
  denominator stays the benchmark's;
- a prediction that is not a string (number, null, list) or is empty: counted with its reason
  and scored wrong (never converted silently)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass
class Prediction:
    id: str
    prediction: Any
    model: str = ""
    prompt: str = ""

    def line(self) -> str:
        return json.dumps({"id": self.id, "prediction": self.prediction, "model": self.model,
                           "prompt": self.prompt}, ensure_ascii=False) + "\n"


def read_predictions(path: Path, known_ids: Iterable[str] = (),
                     skip_unfinished_line: bool = False) -> dict[str, Prediction]:
    """Predictions by id (see the module docstring for the errors). `known_ids`, if given, are
    the benchmark's ids: any other id is an error. `skip_unfinished_line`: ignore a last line
    without its newline (an interrupted run's; resuming predicts that item again)."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if skip_unfinished_line and text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    out: dict[str, Prediction] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); fix or delete the line") from None
        if not isinstance(d, dict) or "id" not in d or "prediction" not in d:
            raise ValueError(f"{path}:{n}: expected an object with 'id' and 'prediction'")
        iid = str(d["id"])
        if iid in out:
            raise ValueError(f"{path}:{n}: duplicate id {iid!r} (first seen earlier in the file); "
                             f"keep one answer per id")
        out[iid] = Prediction(iid, d["prediction"], str(d.get("model", "")), str(d.get("prompt", "")))
    known = set(known_ids)
    if known:
        extra = sorted(set(out) - known)
        if extra:
            raise ValueError(f"{path}: {len(extra)} id(s) not in the benchmark (e.g. {extra[0]!r}): "
                             f"are these predictions of another benchmark or data file?")
    return out


def prediction_problem(p: Any) -> str:
    """Why a stored prediction cannot be parsed ('' when it is a non-empty string)."""
    if not isinstance(p, str):
        return f"prediction is not a string ({type(p).__name__})"
    if not p.strip():
        return "empty prediction"
    return ""
