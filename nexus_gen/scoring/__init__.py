"""nexus_gen/scoring: CLIP, DINO and pixel metrics for images, edit triplets and filters.

- `clip.load_clip(spec)`, `dino.load_dino(spec)`: encoders (profiles tiny / small / paper) with a
  batched, cached image pipeline (`image_encoder`) and cached text encoding.
- `metrics`: the formulas (clip_t, clipscore, clip_i, clip_dir, dino, l1, l2, masked l1).
- `edit_scorer.EditScorer`: many (source, target, instruction, captions) triplets, shared encodings.
- `zeroshot`: clip-benchmark style zero-shot classifier (GenEval colours).
- `policy.select(table, policy)`: filter policies (`datasets_spec/filters/*.yaml`) on scored tables.
- `generation.score_generations`: generated images vs their prompts (clip_t, clipscore).
- `chinese_clip.load_chinese_clip(spec)`: Chinese-CLIP for Chinese captions and prompts.
- `hub`: fail fast, in one line, when hub weights are neither cached nor downloadable.
- `shard_scores.score_shards`: editing/generation shards -> scores parquet + rejects (`nexus-gen score`).
Heavy imports (torch, open_clip, transformers) happen in those modules, not here."""
