"""Every tiny (random-init, seeded) model of the offline `tiny` profile, built in one place.

Each builder writes a small model in the same layout as its real counterpart into
`cache_root()/tiny/<name>` once (`nexus_gen.models.cache.build_once`), and callers load it back
through the ordinary loading path: tiny CLIP, DINO and Chinese-CLIP for the scorers (`encoders`),
tiny Stable Diffusion and InstructPix2Pix pipelines for generation and editing
(`stable_diffusion`), a tiny Mask2Former for GenEval's detector (`detector`)."""
from nexus_gen.models.tiny.detector import TINY_MASK2FORMER_NAME, tiny_mask2former_dir
from nexus_gen.models.tiny.encoders import tiny_chinese_clip_dir, tiny_clip_dir, tiny_dino_dir
from nexus_gen.models.tiny.stable_diffusion import (TINY_IP2P_NAME, TINY_SD_NAME, TINY_SD_SIZE,
                                                    tiny_ip2p_dir, tiny_sd_dir)

__all__ = ["TINY_IP2P_NAME", "TINY_MASK2FORMER_NAME", "TINY_SD_NAME", "TINY_SD_SIZE",
           "tiny_chinese_clip_dir", "tiny_clip_dir", "tiny_dino_dir", "tiny_ip2p_dir",
           "tiny_mask2former_dir", "tiny_sd_dir"]
