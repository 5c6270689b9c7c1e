"""FLOPs and token accounting for merged encoders."""
from .counter import FlopReport, count_flops, encoder_flops, vision_flops

__all__ = ["FlopReport", "count_flops", "encoder_flops", "vision_flops"]
