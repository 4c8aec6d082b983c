"""Every tiny (random-init, seeded) model of the offline `tiny` profile, built in one place.

Each builder writes a small model in the same layout as its real counterpart into
`cache_root()/tiny/<name>` once (`nexus_gen.models.cache.build_once`), and callers load it back
through the ordinary loading path: tiny CLIP, DINO and Chinese-CLIP for the scorers (`encoders`),
tiny Stable Diffusion text-to-image, inpainting and InstructPix2Pix pipelines
(`stable_diffusion`), a tiny Mask2Former for GenEval's detector (`detector`), tiny OWLv2 and
Grounding DINO zero-shot detectors and a tiny SAM for the imagepulse edit backend (`owlv2`,
`grounding_dino`, `sam`), and one tiny Qwen2.5-VL with Qwen's special token ids for the
understanding benchmarks and the backend's captioner (`vlm`); a tiny Nexus-Gen AR model
(`NexusGenAR`, D = 64, 16 output-image tokens) for the training stages (`ar_tiny`); a tiny ControlNet and a tiny IP-Adapter for its InstantStyle stage
(`controlnet`)."""
from nexus_gen.models.tiny.ar_tiny import TINY_AR_NAME, tiny_ar_dir
from nexus_gen.models.tiny.controlnet import (TINY_CONTROLNET_NAME, TINY_IP_ADAPTER_NAME,
                                             tiny_controlnet_dir, tiny_ip_adapter_dir)
from nexus_gen.models.tiny.detector import TINY_MASK2FORMER_NAME, tiny_mask2former_dir
from nexus_gen.models.tiny.grounding_dino import TINY_GROUNDING_DINO_NAME, tiny_grounding_dino_dir
from nexus_gen.models.tiny.encoders import tiny_chinese_clip_dir, tiny_clip_dir, tiny_dino_dir
from nexus_gen.models.tiny.owlv2 import TINY_OWLV2_NAME, tiny_owlv2_dir
from nexus_gen.models.tiny.sam import TINY_SAM_NAME, tiny_sam_dir
from nexus_gen.models.tiny.stable_diffusion import (TINY_IP2P_NAME, TINY_SD_INPAINT_NAME, TINY_SD_NAME,
                                                    TINY_SD_SIZE, tiny_ip2p_dir, tiny_sd_dir,
                                                    tiny_sd_inpaint_dir)
from nexus_gen.models.tiny.vlm import TINY_VLM_NAME, tiny_vlm_dir

__all__ = ["TINY_AR_NAME", "TINY_CONTROLNET_NAME", "TINY_GROUNDING_DINO_NAME", "TINY_IP2P_NAME", "TINY_IP_ADAPTER_NAME",
           "TINY_MASK2FORMER_NAME", "TINY_OWLV2_NAME", "TINY_SAM_NAME", "TINY_SD_INPAINT_NAME", "TINY_SD_NAME",
           "TINY_SD_SIZE", "TINY_VLM_NAME", "tiny_ar_dir", "tiny_chinese_clip_dir", "tiny_clip_dir", "tiny_controlnet_dir",
           "tiny_dino_dir", "tiny_grounding_dino_dir", "tiny_ip2p_dir", "tiny_ip_adapter_dir",
           "tiny_mask2former_dir", "tiny_owlv2_dir", "tiny_sam_dir", "tiny_sd_dir", "tiny_sd_inpaint_dir",
           "tiny_vlm_dir"]
