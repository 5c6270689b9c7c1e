"""VideoMAE v1 (Tong et al., NeurIPS 2022) video classifiers on the shared ViT layers."""
from .model import VIDEOMAE_CONFIGS, VideoMAE, VideoMAEConfig, load_videomae_checkpoint, to_videomae_layout

__all__ = ["VIDEOMAE_CONFIGS", "VideoMAE", "VideoMAEConfig", "load_videomae_checkpoint", "to_videomae_layout"]
