"""Bench (not a test) of the Nexus-Gen AR model on the tiny profile, side by side in one run:

1. an AR training step (our loss: CE + MSE/cos, prefill embeddings, vision_head; forward, backward,
   AdamW) vs the plain `Qwen2_5_VLForConditionalGeneration` language-model step (stock forward with
   labels, output images fed as ordinary input images) on the same batch: ratio, goal <= 1.15.
   Our loss computes `lm_head` only where a label is (the same CE); the ratio with full logits, as
   the stock step computes them, is printed too;
2. prefilled inference of the N embeddings of an output image (one forward) vs feeding predictions
   back one by one (N cached forwards): speed-up, goal >= N/2;
3. peak memory (RSS high-water mark, reset before each measurement) of each.

Prints the ratios and a final JSON line. `python bench/train.py [--steps 10] [--batch 4]`."""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from memory import peak_kb, reset_peak  # noqa: E402  (bench/, the script's own folder)

GOAL_STEP_RATIO = 1.15


def _png(im: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def samples(n: int) -> list[dict[str, Any]]:
    """Unified samples of the three tasks from rendered scenes (templates of the reference)."""
    from nexus_gen.data import templates as T
    from nexus_gen.scenes.render import render
    from nexus_gen.scenes.scene import random_scene
    from nexus_gen.scenes.text import add_instruction, caption

    out = []
    for i in range(n):
        scene = random_scene(i, max_objects=3)
        im = render(scene, 128).image
        other = render(random_scene(1000 + i, max_objects=3), 128).image
        kind = i % 3
        if kind == 0:
            out.append({"id": f"g{i}", "task": "generation", "images": [_png(im)],
                        "messages": T.generation_messages(caption(scene))})
        elif kind == 1:
            out.append({"id": f"e{i}", "task": "editing", "images": [_png(other), _png(im)],
                        "messages": T.editing_messages(add_instruction(scene.objects[0])[0])})
        else:
            out.append({"id": f"u{i}", "task": "understanding", "images": [_png(im)],
                        "messages": T.understanding_messages("Describe the image.", caption(scene))})
    return out


def stock_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The same batch for the stock model: every image (outputs too) an input image, in sequence
    order; image-pad labels ignored."""
    pads = batch["input_ids"] == 151655
    rows = []
    pv_in, g_in = batch["pixel_values"], batch["image_grid_thw"]
    pv_out, g_out = batch["target_pixel_values"], batch["target_grid_thw"]
    # split per image, then interleave by sequence order (inputs sit in user turns, before outputs)
    def split(pv: Any, g: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if pv is None:
            return []
        sizes = (g.prod(-1)).tolist()
        return list(zip(torch.split(pv, sizes), g))
    ins, outs = split(pv_in, g_in), split(pv_out, g_out)
    for b in range(batch["input_ids"].shape[0]):
        n_out = int(batch["output_image_mask"][b].sum()) // 16
        n_in_tokens = int((pads[b] & ~batch["output_image_mask"][b]).sum())
        while n_in_tokens > 0:
            pv, g = ins.pop(0)
            rows.append((pv, g))
            n_in_tokens -= int(g.prod()) // 4
        for _ in range(n_out):
            rows.append(outs.pop(0))
    labels = batch["labels"].masked_fill(pads, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels,
            "pixel_values": torch.cat([r[0] for r in rows]), "image_grid_thw": torch.stack([r[1] for r in rows]),
            "mm_token_type_ids": pads.int()}


def timed(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of `reps` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def peak_mb(fn: Callable[[], Any]) -> float:
    """Peak RSS growth (MB) of one call."""
    start = reset_peak()
    fn()
    return round((peak_kb() - start) / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed repetitions of each measurement")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nexus_gen.data.templates import generation_messages
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir
    from nexus_gen.train.stage_ar import ARStage, freeze_vit

    folder = tiny_ar_dir()
    stage = ARStage({"path": "tiny"}, {})
    batch = stage.collate([stage.example(s) for s in samples(args.batch)])
    ours = NexusGenAR.from_pretrained(folder).train()
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).train()
    freeze_vit(ours)
    freeze_vit(stock)
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    opt_stock = torch.optim.AdamW([p for p in stock.parameters() if p.requires_grad], lr=1e-5)
    s_in = stock_inputs(batch)
    inputs = {k: v for k, v in batch.items() if k != "ids" and v is not None}

    def step_ours(full_logits: bool = False) -> None:
        out = ours(**inputs, logits_at_labels_only=not full_logits)
        opt_ours.zero_grad()
        out.loss.backward()
        opt_ours.step()

    def step_stock() -> None:
        out = stock(**s_in)
        opt_stock.zero_grad()
        out.loss.backward()
        opt_stock.step()

    t_stock = timed(step_stock, args.steps)
    t_ours = timed(step_ours, args.steps)
    t_ours_full = timed(lambda: step_ours(True), args.steps)
    mem_stock, mem_ours = peak_mb(step_stock), peak_mb(step_ours)

    ours.eval()
    n = ours.image_tokens
    msgs = [generation_messages("a red circle, a blue square and two green stars on a white background")]
    with torch.no_grad():
        t_pre = timed(lambda: ours.predict_image_embeds(msgs, prefill=True), args.steps * 3)
        t_one = timed(lambda: ours.predict_image_embeds(msgs, prefill=False), args.steps)
        mem_pre = peak_mb(lambda: ours.predict_image_embeds(msgs, prefill=True))
        mem_one = peak_mb(lambda: ours.predict_image_embeds(msgs, prefill=False))

    ratio, ratio_full, speedup = t_ours / t_stock, t_ours_full / t_stock, t_one / t_pre
    print(f"train step (batch {args.batch}, {batch['input_ids'].shape[1]} tokens): stock LM {t_stock * 1e3:.1f} ms, "
          f"AR {t_ours * 1e3:.1f} ms -> ratio {ratio:.3f} (goal <= {GOAL_STEP_RATIO}); with full logits "
          f"{t_ours_full * 1e3:.1f} ms -> {ratio_full:.3f}")
    print(f"peak memory of a step: stock {mem_stock} MB, AR {mem_ours} MB")
    print(f"inference of N={n} embeddings: prefilled {t_pre * 1e3:.2f} ms, one by one {t_one * 1e3:.2f} ms -> "
          f"speed-up {speedup:.1f}x (goal >= {n / 2:g}); peak memory {mem_pre} / {mem_one} MB")
    print(json.dumps({"step_ratio": round(ratio, 3), "step_ratio_full_logits": round(ratio_full, 3),
                      "step_ratio_goal": GOAL_STEP_RATIO, "step_ms": {"stock": round(t_stock * 1e3, 2),
                                                                      "ar": round(t_ours * 1e3, 2),
                                                                      "ar_full_logits": round(t_ours_full * 1e3, 2)},
                      "step_peak_mb": {"stock": mem_stock, "ar": mem_ours},
                      "prefill_speedup": round(speedup, 2), "prefill_speedup_goal": n / 2,
                      "inference_ms": {"prefilled": round(t_pre * 1e3, 3), "one_by_one": round(t_one * 1e3, 3)},
                      "inference_peak_mb": {"prefilled": mem_pre, "one_by_one": mem_one},
                      "image_tokens": n, "batch": args.batch, "threads": args.threads}))


if __name__ == "__main__":
    main()
