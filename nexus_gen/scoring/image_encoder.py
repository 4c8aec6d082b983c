"""The batched image-embedding pipeline shared by the CLIP and DINO encoders.

Inputs are read and keyed (xxh3-128, see `images.read_input`) in worker threads, de-duplicated and looked up in the
embedding cache; only distinct misses are decoded and preprocessed, in workers, ahead of the
forward pass that runs batched on the caller thread under `torch.inference_mode`. One job can
feed several encoders (and a `DecodedSink`, e.g. pixel metrics) at once: each distinct image is
then read, hashed and decoded once for all of them. A bad image yields a per-item error, never a
crashed batch."""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image

from nexus_gen.parallel import ordered_map
from nexus_gen.scoring.embedding_cache import EmbeddingCache, default_cache
from nexus_gen.scoring.image_inputs import ImageInput, ImageLoadError, describe, read_input, to_rgb
from nexus_gen.scoring.prefetch import default_workers, worker_pool

log = logging.getLogger(__name__)

_DONE = object()
_WINDOW_END = object()
WINDOW = 2048  # items per background job in `embed_images`


@dataclass
class ImageEmbeddings:
    """Per-item result of a batched encode: `vectors[i]` is NaN where `errors[i]` is set."""

    vectors: torch.Tensor  # [N, D] float32 cpu, L2-normalised
    errors: list[Optional[str]]
    keys: list[Optional[str]]  # content key per item (None if unreadable)

    @property
    def ok(self) -> torch.Tensor:
        """Bool mask [N] of items that were encoded."""
        return torch.tensor([e is None for e in self.errors], dtype=torch.bool)


class DecodedSink(Protocol):
    """Another consumer of a job's decoded images, beside its encoders (called from workers)."""

    def start(self, keys: list[Optional[str]], read_errors: list[Optional[BaseException]]) -> None:
        """Every item has been read: its content key, or why it could not be read."""

    def decoded(self, key: str, image: Optional[Image.Image], error: Optional[BaseException]) -> None:
        """One distinct image: decoded RGB (after the encoders' PIL steps), or why it failed."""


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _message(exc: BaseException, name: str, what: str) -> str:
    """Per-item error text: an `ImageLoadError` already names its input."""
    if isinstance(exc, ImageLoadError):
        return str(exc)
    return f"{name}: cannot {what} image ({type(exc).__name__}: {exc})"


class ImageJob:
    """Encoding of a list of images by one or more encoders that started in the background;
    `results()` (or `result()` for one encoder) finishes it.

    Reading, hashing, decoding and preprocessing begin at construction (in threads), so the
    caller can run other forward passes (texts) while images are being prepared. Each distinct
    image is decoded once and goes through every encoder that misses it in its cache (and to
    `sink`, which receives every distinct image). Two schedules:
    - overlap (default when the models run on an accelerator): workers keep preparing up to
      `prefetch` images ahead while the forward passes run;
    - windows (default on CPU, where the forward pass already keeps every core busy and decode
      threads competing with it stall its thread pool): the workers prepare a window of
      `prefetch` images with all cores, then the window is forwarded, then the next is prepared.
      The first window is still prepared while the caller does other work (text encoding)."""

    def __init__(self, encoders: Sequence["ImageEncoderBase"], items: list[ImageInput],
                 batch_size: int, workers: Optional[int], prefetch: Optional[int],
                 overlap: Optional[bool] = None, sink: Optional[DecodedSink] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._encs = list(encoders)
        self._items = items
        self._sink = sink
        self._bs = batch_size
        self._workers = workers or default_workers()
        if overlap is None:
            overlap = bool(self._encs) and all(e.device.type != "cpu" for e in self._encs)
        self._overlap = overlap
        self._window = prefetch or max(8 * batch_size, 64)
        self._q: queue.Queue = queue.Queue(maxsize=self._window if self._overlap else 0)
        self._go = threading.Semaphore(0)  # windows schedule: "the last window is forwarded"
        self._first_ready = threading.Event()
        self._keys: list[Optional[str]] = [None] * len(items)
        self._read_errors: list[Optional[BaseException]] = [None] * len(items)
        self._found: list[dict[str, torch.Tensor]] = [{} for _ in self._encs]  # per encoder
        self._errors_by_key: list[dict[str, str]] = [{} for _ in self._encs]
        self._thread = threading.Thread(target=self._drive, name="nexus-image-job", daemon=True)
        self._thread.start()

    # -- background: read + hash + dedupe + cache lookup, then decode + preprocess misses
    def _read(self, i: int):
        try:
            key, content = read_input(self._items[i])
            return i, key, content, None
        except Exception as exc:  # never let one bad item crash the batch
            return i, None, None, exc

    def _prepare(self, job: tuple[str, object, str, tuple[bool, ...]]):
        key, content, name, need = job
        try:
            img = to_rgb(content, name=name)  # type: ignore[arg-type]
        except Exception as exc:
            if self._sink is not None:
                self._sink.decoded(key, None, exc)
            err = _message(exc, name, "preprocess")
            return key, [None] * len(need), [err if n else None for n in need], name
        outs: list[object] = []
        errs: list[Optional[str]] = []
        for enc, n in zip(self._encs, need):
            out = err = None
            if n:
                try:
                    out = enc.pil_steps(img)
                except Exception as exc:
                    err = _message(exc, name, "preprocess")
            outs.append(out)
            errs.append(err)
        if self._sink is not None:
            self._sink.decoded(key, img, None)
        return key, outs, errs, name

    def _drive(self) -> None:
        try:
            todo: list[tuple[str, object, str, tuple[bool, ...]]] = []
            seen: set[str] = set()
            with worker_pool(self._workers) as pool:
                for i, key, content, exc in pool.map(self._read, range(len(self._items))):
                    if exc is not None:
                        self._read_errors[i] = exc
                        continue
                    self._keys[i] = key
                    if key in seen:
                        continue
                    seen.add(key)
                    need = []
                    for found, enc in zip(self._found, self._encs):
                        vec = enc.cache.get(enc.cache_key, key)
                        if vec is not None:
                            found[key] = vec
                        need.append(vec is None)
                    if any(need) or self._sink is not None:
                        todo.append((key, content, describe(self._items[i]), tuple(need)))
            if self._sink is not None:
                self._sink.start(list(self._keys), list(self._read_errors))
            if self._overlap:
                with worker_pool(self._workers) as pool:
                    prepared = ordered_map(self._prepare, todo, pool,
                                           ahead=max(2 * self._bs, 2 * self._workers))
                    try:
                        for res in prepared:
                            self._q.put(res)
                    finally:
                        prepared.close()  # cancels what has not started
            else:
                with worker_pool(self._workers) as pool:
                    for w, s in enumerate(range(0, len(todo), self._window)):
                        if w:
                            self._go.acquire()
                        for res in pool.map(self._prepare, todo[s:s + self._window]):
                            self._q.put(res)
                        self._q.put(_WINDOW_END)
                        self._first_ready.set()
        except BaseException as exc:  # surfaced in results()
            self._q.put(_Failure(exc))
        finally:
            self._q.put(_DONE)
            self._first_ready.set()

    def wait_ready(self) -> None:
        """Windows schedule: block until the first window is prepared, so the caller's next
        forward pass (texts) does not compete with decoding for the cores. No-op when overlapping."""
        if not self._overlap:
            self._first_ready.wait()

    # -- caller thread: batched forward passes
    def _forward_keys(self, j: int, keys: list[str], tensors: torch.Tensor) -> None:
        enc = self._encs[j]
        vecs = enc.forward_tensors(tensors)
        for key, vec in zip(keys, vecs):
            self._found[j][key] = vec
            enc.cache.put(enc.cache_key, key, vec)

    def _flush(self, j: int, batch: list[tuple[str, torch.Tensor]]) -> None:
        if batch:
            self._forward_keys(j, [k for k, _ in batch], torch.stack([t for _, t in batch]))
        batch.clear()

    def results(self) -> list[ImageEmbeddings]:
        """Run the forward passes and return, per encoder, one row per input item."""
        batches: list[list[tuple[str, torch.Tensor]]] = [[] for _ in self._encs]
        windows: list[list[tuple[str, torch.Tensor]]] = [[] for _ in self._encs]
        while True:
            res = self._q.get()
            if res is _DONE:
                break
            if isinstance(res, _Failure):
                raise RuntimeError(f"image pipeline failed: {res.exc}") from res.exc
            if res is _WINDOW_END:  # windows schedule: the whole window is ready, forward it
                for j, window in enumerate(windows):
                    if window:  # one contiguous tensor for the window, batches are views of it
                        keys, big = [k for k, _ in window], torch.stack([t for _, t in window])
                        window.clear()
                        for s in range(0, len(keys), self._bs):
                            self._forward_keys(j, keys[s:s + self._bs], big[s:s + self._bs])
                self._go.release()
                continue
            key, outs, errs, name = res
            for j, (out, err) in enumerate(zip(outs, errs)):
                if out is None and err is None:  # encoder j had it cached
                    continue
                if err is None:
                    try:
                        tensor = self._encs[j].tensor_steps(out)
                    except Exception as exc:
                        err = f"{name}: cannot preprocess image ({type(exc).__name__}: {exc})"
                if err is not None:
                    self._errors_by_key[j][key] = err
                    continue
                if not self._overlap:
                    windows[j].append((key, tensor))
                    continue
                batches[j].append((key, tensor))
                if len(batches[j]) >= self._bs:
                    self._flush(j, batches[j])
        for j, batch in enumerate(batches):
            self._flush(j, batch)
        self._thread.join()
        return [self._embeddings(j) for j in range(len(self._encs))]

    def result(self) -> ImageEmbeddings:
        """`results()` of a one-encoder job."""
        if len(self._encs) != 1:
            raise ValueError(f"result() is for a one-encoder job; this one has {len(self._encs)}: "
                             "use results()")
        return self.results()[0]

    def _embeddings(self, j: int) -> ImageEmbeddings:
        found, errors_by_key = self._found[j], self._errors_by_key[j]
        out = torch.full((len(self._items), self._encs[j].embed_dim), float("nan"), dtype=torch.float32)
        errors: list[Optional[str]] = [None if e is None else _message(e, describe(it), "read")
                                       for e, it in zip(self._read_errors, self._items)]
        for i, key in enumerate(self._keys):
            if key is None:
                continue
            if key in found:
                out[i] = found[key]
            else:
                errors[i] = errors_by_key.get(key, f"{describe(self._items[i])}: not encoded")
        n_bad = sum(e is not None for e in errors)
        if n_bad:
            log.warning("%d of %d images could not be encoded (first: %s)", n_bad, len(errors),
                        next(e for e in errors if e is not None))
        return ImageEmbeddings(vectors=out, errors=errors, keys=list(self._keys))


class ImageEncoderBase:
    """Common batched image API; subclasses set `model_id`, `preprocess`, `embed_dim`, `device`,
    `dtype` and implement `_forward(batch) -> [B, D]` raw features."""

    model_id: str
    preprocess: Callable[[Image.Image], torch.Tensor]
    embed_dim: int
    device: torch.device
    dtype: torch.dtype
    cache: EmbeddingCache
    images_forwarded: int = 0  # number of images that went through the model

    def _split_preprocess(self) -> tuple[Callable, Callable]:
        """Split `preprocess` into its PIL steps (resize, crop: run in worker threads, which
        release the GIL) and its tensor steps (to-tensor, normalise: run on the caller thread, so
        workers never start torch thread pools that compete with the forward pass). The composed
        result is the same transform, step for step."""
        steps = getattr(self.preprocess, "transforms", None)
        if steps is not None:
            for i, t in enumerate(steps):
                if type(t).__name__ in ("ToTensor", "MaybeToTensor", "PILToTensor"):
                    pil, tens = list(steps[:i]), list(steps[i:])

                    def run(x, fns):
                        for f in fns:
                            x = f(x)
                        return x

                    return (lambda x: run(x, pil)), (lambda x: run(x, tens))
        return self.preprocess, (lambda x: x)

    @property
    def pil_steps(self) -> Callable:
        """The PIL part of `preprocess` (see `_split_preprocess`)."""
        if getattr(self, "_split", None) is None:
            self._split = self._split_preprocess()
        return self._split[0]

    @property
    def tensor_steps(self) -> Callable:
        """The tensor part of `preprocess` (identity if it could not be split)."""
        if getattr(self, "_split", None) is None:
            self._split = self._split_preprocess()
        return self._split[1]

    @property
    def cache_key(self) -> str:
        """Cache namespace: the model id plus the compute dtype (bf16 and fp32 differ slightly)."""
        return f"{self.model_id}|{str(self.dtype).replace('torch.', '')}"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed tensors [B, 3, H, W] -> L2-normalised float32 cpu embeddings [B, D]."""
        batch = batch.to(self.device, dtype=self.dtype)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            feats = self._forward(batch)
        self.images_forwarded += int(batch.shape[0])
        return F.normalize(feats.float(), dim=-1).cpu()

    def start_images(self, images: Iterable[ImageInput], batch_size: int = 32, *,
                     workers: Optional[int] = None, prefetch: Optional[int] = None,
                     overlap: Optional[bool] = None) -> ImageJob:
        """Begin encoding `images` in the background; call `.result()` for the embeddings.
        `overlap`: None picks the schedule by device (see `ImageJob`)."""
        return ImageJob([self], as_list(images), batch_size, workers, prefetch, overlap)

    def embed_images(self, images: Iterable[ImageInput], batch_size: int = 32, *,
                     workers: Optional[int] = None) -> ImageEmbeddings:
        """Encode images, keeping going past bad ones (their rows are NaN, with an error).

        Long lists go through in windows of `WINDOW` items, so the encoded bytes held in memory
        stay bounded (the cache still dedupes across windows)."""
        items = as_list(images)
        parts = [self.start_images(items[s:s + WINDOW], batch_size, workers=workers).result()
                 for s in range(0, len(items), WINDOW)]
        if not parts:
            return ImageEmbeddings(torch.empty(0, self.embed_dim), [], [])
        return ImageEmbeddings(torch.cat([p.vectors for p in parts]),
                               [e for p in parts for e in p.errors], [k for p in parts for k in p.keys])

    def encode_images(self, images: Iterable[ImageInput], batch_size: int = 32) -> torch.Tensor:
        """[N, D] L2-normalised float32 cpu embeddings; raises `ImageLoadError` naming every bad
        input (use `embed_images` to get per-item errors instead)."""
        res = self.embed_images(images, batch_size)
        bad = [(i, e) for i, e in enumerate(res.errors) if e is not None]
        if bad:
            listing = "; ".join(f"item {i}: {e}" for i, e in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ImageLoadError(f"{len(bad)} of {len(res.errors)} images failed: {listing}{more}")
        return res.vectors


def as_list(images: Union[Iterable[ImageInput], ImageInput]) -> list[ImageInput]:
    """Accept one image or an iterable of images."""
    if isinstance(images, (str, bytes, bytearray, memoryview, Image.Image, dict)):
        return [images]
    return list(images)
