"""Every tiny (random-init, seeded) model of the offline `tiny` profile, built in one place.

Each builder writes a small model in the same layout as its real counterpart into
`cache_root()/tiny/<name>` once (`nexus_gen.models.cache.build_once`), and callers load it back
through the ordinary loading path: tiny CLIP, DINO and Chinese-CLIP for the scorers
(`encoders`), a tiny Stable Diffusion pipeline for generation (`stable_diffusion`), a tiny
Mask2Former for GenEval's detector (`detector`), a tiny Qwen2.5-VL for the understanding
benchmarks (`vlm`)."""
from nexus_gen.models.tiny.detector import TINY_MASK2FORMER_NAME, tiny_mask2former_dir
from nexus_gen.models.tiny.encoders import tiny_chinese_clip_dir, tiny_clip_dir, tiny_dino_dir
from nexus_gen.models.tiny.stable_diffusion import TINY_SD_NAME, TINY_SD_SIZE, tiny_sd_dir
from nexus_gen.models.tiny.vlm import TINY_VLM_NAME, tiny_vlm_dir

__all__ = ["TINY_MASK2FORMER_NAME", "TINY_SD_NAME", "TINY_SD_SIZE", "TINY_VLM_NAME",
           "tiny_chinese_clip_dir", "tiny_clip_dir", "tiny_dino_dir", "tiny_mask2former_dir",
           "tiny_sd_dir", "tiny_vlm_dir"]
