"""Official UMT checkpoints (fine-tuned retrieval, pretraining and vision-only layouts) onto our UMT modules.

Reading, unwrapping and the strict report are backbone-neutral (``..checkpoint``); this file only maps layouts.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from ...errors import CheckpointError
from ..checkpoint import LoadReport, load_state_into, read_state_dict, select_prefix, strip_prefix
from ..checkpoint import convert as generic_convert
from ..checkpoint import main as generic_main
from .vision import VisionTransformer

log = logging.getLogger(__name__)

# Keys of pretraining checkpoints that a retrieval model has no use for (MLM head, CLIP distillation decoders,
# the frozen CLIP teacher); they are dropped and reported, never silently loaded.
IGNORED_PREFIXES = ("text_encoder.cls.", "vision_encoder.clip_decoder.", "clip_teacher.")


def to_retrieval_layout(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], bool]:
    """Official key conversion: strip a DDP "module." prefix; in pretraining checkpoints (text_encoder.bert.*)
    delete "bert." from every key containing "bert" (as the official loader does); drop IGNORED_PREFIXES.
    Returns (state, ignored keys, whether the bert rename was applied)."""
    state = strip_prefix(state, "module.")
    renamed = any(k.startswith("text_encoder.bert.") for k in state)
    if renamed:
        state = {(k.replace("bert.", "") if "bert" in k else k): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}, ignored, renamed


VISION_MODULE_PREFIXES = ("encoder.", "pool_norm.", "clip_decoder.")


def vision_only_state(state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The vision encoder's own keys if ``state`` holds only a UMT vision encoder, else None. Recognised: what UMT's
    vision_encoder module saves (``encoder.*`` + ``pool_norm.*``, with ``clip_decoder.*`` in pretraining files,
    dropped) and a whole-model file that kept only ``vision_encoder.*``."""
    if state and all(k.startswith("vision_encoder.") for k in state):
        state = select_prefix(state, "vision_encoder.")
    if not state or not all(k.startswith(VISION_MODULE_PREFIXES) for k in state):
        return None
    if not any(k.startswith("encoder.") for k in state):
        return None
    return {k: v for k, v in state.items() if not k.startswith("clip_decoder.")}


def describe_layout(state: Mapping[str, Tensor]) -> str:
    """A name for the layout of a (converted) state dict, for messages."""
    if vision_only_state(state) is not None:
        return "UMT vision encoder only"
    tops = {k.split(".", 1)[0] for k in state}
    if {"vision_encoder", "text_encoder"} <= tops:
        return "whole UMT (vision and text towers)"
    if "blocks" in tops and "patch_embed" in tops:
        return "single-modality ViT classifier (patch_embed.*, blocks.*: UMT / VideoMAE action-recognition layout)"
    return "unrecognised (top-level keys: " + ", ".join(sorted(tops)[:8]) + ")"


def load_umt_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official UMT checkpoint (fine-tuned, pretraining or vision-only; .pth or .safetensors) into a UMT
    model or into a VisionTransformer (``vision_encoder.`` prefix handled).

    A vision-only file and a whole UMT: strict raises a CheckpointError that says so and how to load the vision
    tower alone; strict=False loads the vision tower, logs a warning naming what stays as initialised (text tower,
    projections, ITM head, temperature) and returns the report, whose ``missing`` lists those keys.
    """
    state, ignored, renamed = to_retrieval_layout(read_state_dict(path))
    if isinstance(model, VisionTransformer):
        if any(k.startswith("vision_encoder.") for k in state):
            state = select_prefix(state, "vision_encoder.")
        state = vision_only_state(state) or state  # a pretraining file's clip_decoder.* dropped
    whole_umt = isinstance(getattr(model, "vision_encoder", None), VisionTransformer)  # UMT (.model imports this file)
    vision_state = vision_only_state(state) if whole_umt else None
    if vision_state is not None:
        state, vision = vision_state, model.vision_encoder
        fits = load_state_into(vision, state, str(path), strict=False) if not strict else _dry_report(vision, state, path)
        text_keys = sum(1 for k in model.state_dict() if not k.startswith("vision_encoder."))
        message = (f"{path} holds only a UMT vision encoder ({fits.loaded if not strict else _matching(vision, state)} "
                   f"of {len(vision.state_dict())} vision tensors match); the text tower and heads ({text_keys} tensors) "
                   "are not in it. Load the vision tower alone with load_umt_checkpoint(model.vision_encoder, path), or "
                   "pass strict=False to keep the text tower as initialised")
        if strict:
            raise CheckpointError(message)
        stay = sorted(k for k in model.state_dict() if not k.startswith("vision_encoder."))
        fits.missing = [f"vision_encoder.{k}" for k in fits.missing] + stay
        fits.unexpected = [f"vision_encoder.{k}" for k in fits.unexpected]
        fits.mismatched = [(f"vision_encoder.{k}", a, b) for k, a, b in fits.mismatched]
        fits.notes.append("vision-only file: the text tower and heads were not in it")
        fits.ignored, fits.renamed_bert = ignored, renamed
        log.warning("%s: a vision-only file, %d vision tensors loaded; these stay as initialised (random): %s",
                    path, fits.loaded, group_keys(stay))
        return fits
    try:
        report = load_state_into(model, state, str(path), strict,
                                 report=LoadReport(path=str(path), layout=describe_layout(state)))
    except CheckpointError as err:
        raise CheckpointError(str(err) + _single_modality_hint(state)) from None
    report.ignored, report.renamed_bert = ignored, renamed
    return report


def _single_modality_hint(state: Mapping[str, Tensor]) -> str:
    tops = {k.split(".", 1)[0] for k in state}
    if "blocks" in tops and "patch_embed" in tops:
        return ("\n  this is an action-recognition (single-modality) checkpoint: use it with a classification "
                "preset (videomae_b16, ...), not with a UMT retrieval model")
    return ""


def group_keys(keys: list[str]) -> str:
    """State-dict keys summed up by module: "text_encoder (90 tensors), vision_proj (2 tensors), temp (1 tensor)"."""
    counts: dict[str, int] = {}
    for key in keys:
        top = key.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{name} ({n} tensor{'s' if n != 1 else ''})" for name, n in counts.items())


def _matching(model: nn.Module, state: Mapping[str, Tensor]) -> int:
    own = model.state_dict()
    return sum(1 for k, v in state.items() if k in own and own[k].shape == v.shape)


def _dry_report(model: nn.Module, state: Mapping[str, Tensor], path: str | Path) -> LoadReport:
    return LoadReport(path=str(path), loaded=_matching(model, state))


def _umt_layout(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    state, ignored, _ = to_retrieval_layout(state)
    return state, f" ({len(ignored)} pretraining-only keys dropped)"


def convert(src: str, dst: str, trust: bool = False) -> None:
    """Rewrite a checkpoint as safetensors in the retrieval layout. ``trust`` allows full unpickling of src."""
    generic_convert(src, dst, trust, _umt_layout)


def main(argv: list[str] | None = None) -> None:
    generic_main(argv, _umt_layout, "Convert an official UMT checkpoint to safetensors.")


if __name__ == "__main__":
    main()
