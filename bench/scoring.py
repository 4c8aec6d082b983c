"""Benchmark of the scoring hot path (not a test): edit triplets from real images of mixed
sizes, read from disk, scored in both directions with clip_t, clip_i and clip_dir on ViT-B-32
(random weights: the arithmetic is the same as with real ones).

(a) ours:  EditScorer over paths (decode + preprocess in workers, shared encodings, cache);
(b) limit: one forward pass per distinct image and distinct text, on ready tensors, batched;
(c) naive: each metric on its own, each encoding its own inputs one at a time (PIL + open_clip
    preprocessing, batch 1).
Last line: JSON with triplets/s of each and vs_limit = a/b, vs_naive = a/c.
Usage: python bench/scoring.py [--quick] [--n 128] [--batch-size 32] [--workers N]"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

log = logging.getLogger("bench.scoring")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nexus_gen_example"
SKIMAGE = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
           "colorwheel", "stereo_motorcycle", "retina"]
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220),
          "yellow": (240, 220, 40), "purple": (140, 50, 170), "orange": (250, 140, 20),
          "pink": (250, 150, 190), "white": (250, 250, 250), "black": (10, 10, 10)}
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "centre"]


def base_images() -> list[tuple[str, Image.Image]]:
    """Real photos: skimage.data and the shared fixtures."""
    import skimage.data as data

    out = []
    for name in SKIMAGE:
        arr = getattr(data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr
        out.append((name.replace("_", " "), Image.fromarray(arr).convert("RGB")))
    for p in sorted(FIXTURES.rglob("*.png")) + sorted(FIXTURES.rglob("*.jpg")):
        out.append((p.stem.replace("_", " "), Image.open(p).convert("RGB")))
    return out


def make_triplets(n: int, out_dir: Path):
    """`n` (source path, target path, instruction, reverse, source caption, target caption)."""
    from nexus_gen.scoring.edit_scorer import EditTriplet

    rng = np.random.default_rng(0)
    bases = base_images()
    trips = []
    for i in range(n):
        name, base = bases[i % len(bases)]
        w, h = base.size
        scale = rng.uniform(0.35, 1.0)
        cw, ch = max(64, int(w * scale)), max(64, int(h * scale))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.choice([256, 320, 384, 448, 512, 640, 768]))
        src = base.crop((x0, y0, x0 + cw, y0 + ch))
        src = src.resize((side, max(32, int(side * ch / cw))), Image.Resampling.BICUBIC)
        color = list(COLORS)[i % len(COLORS)]
        pos = POSITIONS[(i // len(COLORS)) % len(POSITIONS)]
        tgt = src.copy()
        W, H = tgt.size
        bw, bh = W // 4, H // 4
        cx = {"left": W // 4, "right": 3 * W // 4}.get(pos.split()[-1], W // 2)
        cy = {"top": H // 4, "bottom": 3 * H // 4}.get(pos.split()[0], H // 2)
        ImageDraw.Draw(tgt).rectangle((cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2),
                                      fill=COLORS[color])
        ext = "jpg" if i % 2 else "png"
        sp, tp = out_dir / f"{i:04d}_src.{ext}", out_dir / f"{i:04d}_tgt.{ext}"
        src.save(sp, quality=92) if ext == "jpg" else src.save(sp)
        tgt.save(tp, quality=92) if ext == "jpg" else tgt.save(tp)
        src_cap = f"a photo of {name}"
        tgt_cap = f"a photo of {name} with a {color} square in the {pos}"
        trips.append(EditTriplet(f"{i:04d}", str(sp), str(tp), f"add a {color} square in the {pos}",
                                 src_cap, tgt_cap))
        trips.append(EditTriplet(f"{i:04d}_rev", str(tp), str(sp), f"remove the {color} square",
                                 tgt_cap, src_cap))
    return trips


def run_ours(enc, trips, batch_size: int, workers: int) -> float:
    from nexus_gen.scoring.edit_scorer import EditScorer

    scorer = EditScorer(enc, metrics=("clip_t", "clip_i", "clip_dir"), batch_size=batch_size,
                        workers=workers)
    t = time.perf_counter()
    rows = scorer.score_all(trips)
    dt = time.perf_counter() - t
    assert all(r["error"] is None for r in rows), "bench images must all decode"
    return dt


def run_limit(enc, trips, batch_size: int, plain_text: bool) -> float:
    """Distinct images / texts as ready tensors, batched forwards + the metric arithmetic."""
    paths = list(dict.fromkeys(p for t in trips for p in (t.source, t.target)))
    texts = list(dict.fromkeys(c for t in trips for c in (t.source_caption, t.target_caption)))
    pix = torch.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in paths])
    tok = enc.tokenizer(texts)
    m = enc.model
    t = time.perf_counter()
    with torch.inference_mode():
        img = torch.cat([m.encode_image(pix[s:s + batch_size]) for s in range(0, len(pix), batch_size)])
        enc_txt = m.encode_text if plain_text else enc._encode_tokens
        txt = torch.cat([enc_txt(tok[s:s + 64]) for s in range(0, len(tok), 64)])
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        pi = {p: i for i, p in enumerate(paths)}
        ti = {c: i for i, c in enumerate(texts)}
        s = img[[pi[t.source] for t in trips]]
        g = img[[pi[t.target] for t in trips]]
        sc = txt[[ti[t.source_caption] for t in trips]]
        tc = txt[[ti[t.target_caption] for t in trips]]
        _ = ((g * tc).sum(-1), (s * sc).sum(-1), (s * g).sum(-1),
             F.cosine_similarity(g - s, tc - sc, dim=-1))
    return time.perf_counter() - t


def run_naive(enc, trips) -> float:
    """Per-metric helpers, each encoding its own inputs one at a time."""
    m, pre, tok = enc.model, enc.preprocess, enc.tokenizer

    def img(path):
        with torch.inference_mode():
            return F.normalize(m.encode_image(pre(Image.open(path).convert("RGB"))[None]), dim=-1)[0]

    def txt(s):
        with torch.inference_mode():
            return F.normalize(m.encode_text(tok([s])), dim=-1)[0]

    t = time.perf_counter()
    for tr in trips:
        _clip_t = float(img(tr.target) @ txt(tr.target_caption))
        _clip_i = float(img(tr.source) @ img(tr.target))
        d_img = img(tr.target) - img(tr.source)
        d_txt = txt(tr.target_caption) - txt(tr.source_caption)
        _clip_dir = float(F.cosine_similarity(d_img, d_txt, dim=0))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N (16 triplets)")
    ap.add_argument("--n", type=int, default=128, help="edit triplets (each scored both ways)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--model", default="ViT-B-32-quickgelu:random")
    ap.add_argument("--no-naive", action="store_true", help="skip (c) (for tuning runs)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b); the best counts")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "randomly initialised" on root
    for name in ("bench", "nexus_gen"):
        logging.getLogger(name).setLevel(logging.INFO)
    from nexus_gen.scoring.clip import load_clip
    from nexus_gen.scoring.embedding_cache import EmbeddingCache
    from nexus_gen.scoring.prefetch import default_workers

    n = 16 if args.quick else args.n
    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-scoring-") as tmp:
        trips = make_triplets(n, Path(tmp))
        n_img = len({p for t in trips for p in (t.source, t.target)})
        n_txt = len({c for t in trips for c in (t.source_caption, t.target_caption)})
        log.info("%d triplets x 2 directions = %d records; %d distinct images, %d distinct texts; "
                 "%d torch threads, %d decode workers", n, len(trips), n_img, n_txt,
                 torch.get_num_threads(), workers)
        enc = load_clip(args.model, cache=EmbeddingCache())
        with torch.inference_mode():  # warm-up (first-call allocations)
            enc.model.encode_image(torch.zeros(2, 3, 224, 224))
            enc.model.encode_text(enc.tokenizer(["warm up"]))
        # the machine may be shared: (a) and (b) alternate and the best of `repeat` runs counts
        t_limit = t_limit_plain = t_ours = float("inf")
        for r in range(args.repeat):
            t_limit = min(t_limit, run_limit(enc, trips, args.batch_size, plain_text=False))
            t_limit_plain = min(t_limit_plain, run_limit(enc, trips, args.batch_size, plain_text=True))
            enc.cache.clear()  # (a) starts cold every time: no embedding is reused across runs
            enc.images_forwarded = enc.texts_forwarded = 0
            t_ours = min(t_ours, run_ours(enc, trips, args.batch_size, workers))
            log.info("run %d: ours %.2fs (%d image + %d text forwards), limit %.2fs", r,
                     t_ours, enc.images_forwarded, enc.texts_forwarded, t_limit)
        t_naive = run_naive(enc, trips) if not args.no_naive else float("nan")
    rec = len(trips)
    a, b, bp, c = rec / t_ours, rec / t_limit, rec / t_limit_plain, rec / t_naive
    log.info("records/s: ours %.2f, limit %.2f (limit with full-context text %.2f), naive %.2f",
             a, b, bp, c)
    print(json.dumps({"triplets": n, "repeat": args.repeat, "records": rec, "distinct_images": n_img,
                      "distinct_texts": n_txt, "model": enc.model_id,
                      "torch_threads": torch.get_num_threads(), "workers": workers,
                      "ours_per_s": round(a, 3), "limit_per_s": round(b, 3),
                      "limit_full_context_text_per_s": round(bp, 3), "naive_per_s": round(c, 3),
                      "vs_limit": round(a / b, 3), "vs_limit_full_context_text": round(a / bp, 3),
                      "vs_naive": round(a / c, 3)}))


if __name__ == "__main__":
    main()
