"""ViFi-CLIP (Rasheed et al., CVPR 2023): CLIP ViT-B/16 per frame + the CLIP text tower; importing it registers
the presets."""
from .model import ViFiCLIP, ViFiCLIPConfig, load_vificlip_checkpoint, to_vificlip_layout

__all__ = ["ViFiCLIP", "ViFiCLIPConfig", "load_vificlip_checkpoint", "to_vificlip_layout"]
