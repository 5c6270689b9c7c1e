"""ViFi-CLIP (Rasheed et al., CVPR 2023): CLIP ViT-B/16 per frame + the CLIP text tower."""
from .model import (VIFICLIP_CONFIGS, FrameViTEncoder, ViFiCLIP, ViFiCLIPConfig, load_vificlip_checkpoint,
                    to_vificlip_layout)

__all__ = ["FrameViTEncoder", "VIFICLIP_CONFIGS", "ViFiCLIP", "ViFiCLIPConfig", "load_vificlip_checkpoint",
           "to_vificlip_layout"]
