"""Score GenEval images: a layout folder through a detector (writing a re-scorable detections
file, resumable), or a detections file alone; official results rows and the summary.

`score_folder` detects each image once, stores every candidate detection (box, score, and the
colour of the kept objects a colour clause will judge, classified on the masked crop), then judges
all images from that file. `rescore_file` judges a detections file with other options; objects
without a stored colour are classified on the image at `filename` (box crop, no mask).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, Union

from PIL import Image

from eval.geneval.detections_file import (
    ImageRecord, drop_unterminated_tail, read_records, record_line,
)
from eval.geneval.layout import atomic_path, iter_images
from eval.geneval.rules import ColorFn, ScoringOptions, judge, keep_detections, result_row
from nexus_gen.data.images import decode_image
from nexus_gen.detection import Detection, group_by_label

log = logging.getLogger(__name__)

Detector = Callable[[Image.Image], list[Detection]]
DETECTIONS_FILE = "detections.jsonl"
RESULTS_FILE = "results.jsonl"


class ColorClassifierLike(Protocol):
    """What the scorer needs from a colour classifier (see `eval.geneval.color`)."""

    def classify(self, image: Image.Image, classname: str,
                 objects: Sequence[Detection]) -> list[str]: ...


class _LazyClassifier:
    """Loads the named CLIP colour classifier only when a colour first has to be classified
    (`precision`: `amp` | `fp32`, None for the device's default; see `eval.geneval.color`)."""

    def __init__(self, clip: str, device: str, precision: Optional[str] = None) -> None:
        self.clip, self.device, self.precision = clip, device, precision
        self._inner: Optional[ColorClassifierLike] = None

    def classify(self, image: Image.Image, classname: str,
                 objects: Sequence[Detection]) -> list[str]:
        if self._inner is None:
            from eval.geneval.color import ColorClassifier

            log.info("loading the CLIP colour classifier %r", self.clip)
            try:
                self._inner = ColorClassifier.load(self.clip, device=self.device,
                                                   precision=self.precision)
            except (OSError, RuntimeError, ValueError) as e:
                raise ValueError(
                    f"a colour clause on {classname!r} has detections without a stored 'color', "
                    f"and the CLIP colour classifier {self.clip!r} cannot be loaded: {e}. Store "
                    "colours in the detections file or choose another CLIP (e.g. a local one)"
                ) from e
        return self._inner.classify(image, classname, objects)


Options = Union[ScoringOptions, Mapping[str, Any], None]


def as_options(options: Options) -> ScoringOptions:
    """ScoringOptions from options, a dict of official option names (values may be strings),
    or None (the official defaults)."""
    if options is None:
        return ScoringOptions()
    if isinstance(options, ScoringOptions):
        return options
    if isinstance(options, Mapping):
        return ScoringOptions.from_mapping(options)
    raise TypeError(f"GenEval options must be ScoringOptions or a dict, got {type(options).__name__}")


def open_image(path: Path) -> Image.Image:
    """RGB image with EXIF orientation applied (as the official scorer reads it), through the
    project's safe decoder (pixel guard, truncation check, any mode to RGB)."""
    try:
        return decode_image(Path(path).read_bytes(), name=str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read GenEval image {path}: {e}") from e


def color_classes(metadata: dict[str, Any]) -> list[str]:
    """Classes whose colour some include clause of the prompt checks."""
    return sorted({req["class"] for req in metadata.get("include", []) if "color" in req})


def detect_image(path: Path, metadata: dict[str, Any], detector: Detector,
                 classifier: ColorClassifierLike, options: ScoringOptions,
                 filename: Optional[str] = None) -> ImageRecord:
    """Detect one image; classify the colour of every kept object of the colour-checked classes
    (masked crop) so the stored record re-scores without images."""
    image = open_image(path)
    grouped = group_by_label(sorted(detector(image), key=lambda d: -d.score))
    for cls in color_classes(metadata):
        kept = keep_detections({cls: grouped.get(cls, [])}, metadata["tag"], options).get(cls, [])
        todo = [d for d in kept if d.color is None]
        if todo:
            for d, c in zip(todo, classifier.classify(image, cls, todo)):
                d.color = c
    return ImageRecord(filename=filename or str(path), metadata=dict(metadata), detections=grouped)


def _layout_key(filename: str) -> tuple[str, ...]:
    """`<idx>/samples/<n>.png`: the part of an image path that identifies it inside a layout."""
    return Path(filename).parts[-3:]


def _resolve_image(filename: str, base: Path) -> Path:
    """The image behind a record: the path as written, else its layout tail under `base`."""
    p = Path(filename)
    if p.is_file():
        return p
    alt = base.joinpath(*_layout_key(filename))
    if alt.is_file():
        return alt
    raise FileNotFoundError(f"image {filename!r} not found (also tried {alt}); a colour clause "
                            "without stored 'color' needs the image to classify it")


def score_records(records: Iterable[ImageRecord], options: ScoringOptions = ScoringOptions(),
                  classifier: Optional[ColorClassifierLike] = None,
                  image_base: Path = Path(".")) -> list[dict[str, Any]]:
    """Official results rows for detection records (colours classified only where missing)."""
    rows = []
    for rec in records:
        color_fn = _image_color_fn(rec.filename, image_base, classifier)
        verdict = judge(rec.metadata, rec.detections, color_fn, options)
        rows.append(result_row(rec.filename, rec.metadata, verdict))
    return rows


def _image_color_fn(filename: str, base: Path,
                    classifier: Optional[ColorClassifierLike]) -> Optional[ColorFn]:
    if classifier is None:
        return None
    cache: dict[str, Image.Image] = {}

    def color_fn(classname: str, objects: list[Detection]) -> list[str]:
        if "image" not in cache:
            cache["image"] = open_image(_resolve_image(filename, base))
        return classifier.classify(cache["image"], classname, objects)

    return color_fn


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-tag image accuracy, `overall` (unweighted mean over the tags), `correct_images`
    (share of images), `correct_prompts` (share of prompts with any image correct), counts."""
    if not rows:
        raise ValueError("no GenEval results to summarize")
    per_tag: dict[str, list[bool]] = {}
    per_prompt: dict[str, bool] = {}
    for r in rows:
        per_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"])
        per_prompt[key] = per_prompt.get(key, False) or bool(r["correct"])
    tag_acc = {tag: sum(v) / len(v) for tag, v in per_tag.items()}
    summary: dict[str, Any] = {"overall": sum(tag_acc.values()) / len(tag_acc)}
    summary.update(tag_acc)
    summary["correct_images"] = sum(bool(r["correct"]) for r in rows) / len(rows)
    summary["correct_prompts"] = sum(per_prompt.values()) / len(per_prompt)
    summary["n_images"] = len(rows)
    summary["n_prompts"] = len(per_prompt)
    return summary


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write rows as JSON lines atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _unique(records: Iterable[ImageRecord], source: Path) -> list[ImageRecord]:
    """Records, refusing two for one image (which would count it twice)."""
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for i, rec in enumerate(records):
        key = _layout_key(rec.filename) if len(Path(rec.filename).parts) >= 3 else (rec.filename,)
        if key in seen:
            raise ValueError(f"{source}: record {i + 1} repeats image {rec.filename!r} "
                             f"(first at record {seen[key] + 1})")
        seen[key] = i
        out.append(rec)
    return out


def score_folder(out_dir: Path, detector: Detector,
                 classifier: Optional[ColorClassifierLike] = None,
                 options: Options = None, *, clip: str = "paper",
                 device: str = "cpu", indices: Optional[Iterable[int]] = None,
                 precision: Optional[str] = None,
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score a GenEval layout folder: `<out>/detections.jsonl` (resumable: images already in it
    are not detected again) and `<out>/results.jsonl`; returns (rows, summary).
    Without `classifier`, the CLIP colour classifier `clip` is loaded when first needed, in
    `precision` (None: `amp` on CUDA, else `fp32`). `indices` restricts scoring to those prompt folders (default: every prompt folder)."""
    out_dir = Path(out_dir)
    options = as_options(options)
    every = list(iter_images(out_dir))
    images = every
    if indices is not None:
        wanted = set(indices)
        images = [img for img in every if img.index in wanted]
    if not images:
        raise ValueError(f"GenEval folder {out_dir} has no images (<idx>/samples/<n>.png)"
                         + (" among the selected prompts" if indices is not None else ""))
    classifier = classifier or _LazyClassifier(clip, device, precision)
    det_path = out_dir / DETECTIONS_FILE
    drop_unterminated_tail(det_path)
    done: set[tuple[str, ...]] = set()
    if det_path.exists():
        done = {_layout_key(r.filename) for r in _unique(read_records(det_path), det_path)}
    todo = [img for img in images if _layout_key(str(img.path)) not in done]
    log.info("GenEval scoring %s: %d images, %d already detected, %d to detect",
             out_dir, len(images), len(images) - len(todo), len(todo))
    _detect_all(todo, det_path, detector, classifier, options)
    by_key = {_layout_key(r.filename): r for r in read_records(det_path)}
    # Rewrite in layout order (same bytes whatever the resume history); records of images
    # outside the selection or no longer in the folder are kept, after the folder's own.
    order = [k for k in (_layout_key(str(img.path)) for img in every) if k in by_key]
    in_folder = set(order)
    order += [k for k in by_key if k not in in_folder]
    write_jsonl((by_key[k].to_json() for k in order), det_path)
    records = [by_key[_layout_key(str(img.path))] for img in images]
    rows = score_records(records, options, classifier, image_base=out_dir)
    write_jsonl(rows, out_dir / RESULTS_FILE)
    summary = summarize(rows)
    log.info("GenEval overall %.4f over %d images", summary["overall"], len(rows))
    return rows, summary


def _detect_all(todo: list, det_path: Path, detector: Detector,
                classifier: ColorClassifierLike, options: ScoringOptions) -> None:
    """Detect images and append one flushed line each, so a killed run keeps what it did."""
    if not todo:
        return
    from tqdm.auto import tqdm

    with det_path.open("a", encoding="utf-8") as f:
        for img in tqdm(todo, desc="GenEval detect", unit="img", disable=None):
            rec = detect_image(img.path, img.metadata, detector, classifier, options)
            f.write(record_line(rec))
            f.flush()


def rescore_file(detections_jsonl: Path, out_jsonl: Path,
                 options: Options = None,
                 classifier: Optional[ColorClassifierLike] = None, *, clip: str = "paper",
                 device: str = "cpu", precision: Optional[str] = None) -> dict[str, Any]:
    """Re-score a detections file without a detector: write official results rows to
    `out_jsonl` and return the summary. Stored colours are used; missing ones are classified
    with `classifier` (default: CLIP `clip` in `precision`, loaded only if needed) on the image
    at `filename`."""
    detections_jsonl = Path(detections_jsonl)
    options = as_options(options)
    records = _unique(read_records(detections_jsonl), detections_jsonl)
    if not records:
        raise ValueError(f"detections file {detections_jsonl} has no records")
    classifier = classifier or _LazyClassifier(clip, device, precision)
    rows = score_records(records, options, classifier, image_base=detections_jsonl.parent)
    write_jsonl(rows, Path(out_jsonl))
    return summarize(rows)
