"""VideoMAE v1 (Tong et al., NeurIPS 2022) video classifiers on the shared ViT layers; importing it registers the
presets."""
from .model import VideoMAE, VideoMAEConfig, load_videomae_checkpoint, to_videomae_layout

__all__ = ["VideoMAE", "VideoMAEConfig", "load_videomae_checkpoint", "to_videomae_layout"]
