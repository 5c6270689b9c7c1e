"""One contract test over every registered backbone (timm's pattern): the merge contract and the interfaces each
model declares (``implements``); and proof that it catches a broken one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backbone_contract import CHECKS, check_compiles, check_declared, small_overrides
from vidtldr_pl.backbones import create_model, list_models
from vidtldr_pl.backbones.interfaces import DualEncoder
from vidtldr_pl.backbones.layers import Block, ViTConfig, ViTEncoder
from vidtldr_pl.merging import MergeState

# every registered model, plus a CLS-token variant so that prefix protection is exercised before ViFi-CLIP exists
CASES = [(name, {}) for name in list_models()] + [("videomae_tiny", {"class_token": True, "pos_embed": "learned"})]
IDS = [name + ("+cls" if extra else "") for name, extra in CASES]
_built: dict[str, nn.Module] = {}


def build(name: str, extra: dict) -> nn.Module:
    key = name + repr(sorted(extra.items()))
    if key not in _built:
        torch.manual_seed(0)
        model = create_model(name, **small_overrides(name), **extra)
        for p in model.parameters():  # random biases / norms too, so that every parameter matters
            with torch.no_grad():
                p.add_(0.02 * torch.randn_like(p))
        _built[key] = model
    return _built[key]


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_contract(name, extra, check):
    CHECKS[check](build(name, extra))


# one preset per model file (sizes share the code; compiling on 2 CPU cores takes about a minute each)
COMPILE_CASES = [c for c, i in zip(CASES, IDS) if i.endswith(("_tiny", "+cls"))]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), COMPILE_CASES, ids=[i for i in IDS if i.endswith(("_tiny", "+cls"))])
def test_contract_compiles(name, extra):
    check_compiles(build(name, extra))


def test_cls_variant_declares_its_prefix():
    model = build("videomae_tiny", {"class_token": True, "pos_embed": "learned"})
    assert model.encoder.num_prefix_tokens == 1 and model.encoder.num_tokens == 1 + 2 * (32 // 16) ** 2  # CLS + 8


# ---------------------------------------------------------------------------------- a backbone that breaks it
class MergeAfterMlpBlock(Block):
    """Calls the merge slot after the MLP and forgets to count tokens: breaks the contract."""

    def forward(self, x: torch.Tensor, state: MergeState | None = None) -> torch.Tensor:
        state = state if state is not None else MergeState()
        out, info = self._attn_branch(x, state.attention_bias(), self.merge is not None and self.merge.needs_attention)
        x = x + out
        x = x + self._mlp_branch(x)
        return self.merge(x, state, info) if self.merge is not None else x


class ForgetsPrefixEncoder(ViTEncoder):
    """Has a CLS token but does not declare it: merging may swallow it."""

    @property
    def num_prefix_tokens(self) -> int:
        return 0


class Wrapper(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def _tiny_cfg(**kw) -> ViTConfig:
    return ViTConfig(embed_dim=32, depth=3, num_heads=2, img_size=32, num_frames=2, **kw)


def test_a_broken_block_fails_the_contract():
    encoder = ViTEncoder(_tiny_cfg())
    encoder.blocks = nn.ModuleList(MergeAfterMlpBlock(32, 2) for _ in range(3))
    with pytest.raises(AssertionError):
        CHECKS["round_trip"](Wrapper(encoder))


def test_an_undeclared_cls_token_fails_the_contract():
    torch.manual_seed(0)
    encoder = ForgetsPrefixEncoder(_tiny_cfg(class_token=True, pos_embed="learned"))
    with torch.no_grad():
        encoder.cls_token.normal_()
    with pytest.raises(AssertionError):
        CHECKS["prefix_protected"](Wrapper(encoder))


def test_a_model_without_implements_fails_the_contract():
    with pytest.raises(AssertionError, match="declares no `implements"):
        CHECKS["interfaces"](Wrapper(ViTEncoder(_tiny_cfg())))


class WrongTextSignature(nn.Module):
    """Declares DualEncoder, but its encode_text names its arguments differently."""

    implements = (DualEncoder,)

    def encode_vision(self, video):
        return video, video

    def encode_text(self, ids, mask):
        return ids

    def vision_embed(self, pooled):
        return pooled

    def text_embed(self, text_hidden):
        return text_hidden

    def temperature(self, clamp=False):
        return torch.ones(1)


def test_a_declared_interface_with_other_parameter_names_fails_the_contract():
    with pytest.raises(AssertionError, match="encode_text lacks parameters"):
        check_declared(WrongTextSignature())
