"""tools/init_from_umt_demo.py: the retrieval demo's vision encoder carried into the VideoMAE and ViFi-CLIP demo
layouts (what each demo's training starts from)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vidtldr_pl.backbones import create_model

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("init_from_umt_demo", ROOT / "tools" / "init_from_umt_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _umt() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    umt = create_model("umt_demo").eval()
    with torch.no_grad():  # non-trivial biases everywhere (a fresh model has zeros)
        for name, p in umt.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return umt, umt.state_dict()


def test_videomae_demo_embeds_a_still_clip_as_the_umt_demo_and_keeps_its_blocks():
    umt, state = _umt()
    target = create_model("videomae_demo").state_dict()
    mapped = _script().videomae_from_umt(state, target)
    assert set(mapped) == set(target)
    model = create_model("videomae_demo").eval()
    model.load_state_dict(mapped, strict=True)
    still = torch.randn(2, 3, 1, 96, 96).expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():
        ours = model.encoder.patch_embed(still)  # (B, 4 tubelets x 36, D)
        theirs = umt.vision_encoder.encoder.patch_embed(still[:, :, :1])  # one frame (B, 36, D)
    torch.testing.assert_close(ours, theirs.repeat(1, 4, 1), rtol=1e-5, atol=1e-5)
    for name, value in state.items():
        if name.startswith("vision_encoder.encoder.blocks."):
            assert torch.equal(mapped[name.removeprefix("vision_encoder.")], value), name
    torch.testing.assert_close(mapped["fc_norm.weight"], state["vision_encoder.encoder.norm.weight"])
    assert torch.equal(mapped["head.weight"], target["head.weight"])  # the head keeps its own initialisation


def test_vificlip_demo_frame_tokens_and_first_block_equal_the_umt_demo():
    umt, state = _umt()
    target = create_model("vificlip_demo").state_dict()
    mapped = _script().vificlip_from_umt(state, target)
    assert set(mapped) == set(target)
    model = create_model("vificlip_demo").eval()
    model.load_state_dict(mapped, strict=True)
    frame = torch.randn(2, 3, 1, 96, 96)
    with torch.no_grad():
        enc = model.encoder
        ours = enc.patch_embed(frame) + enc.pos_embed[:, 1:]  # the patch tokens before ln_pre (CLIP has no bias)
        u = umt.vision_encoder.encoder
        theirs = u.patch_embed(frame) + u.position_embedding(1, frame.device)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        x = torch.randn(2, 37, 192)  # the packed q|k|v bias: UMT's q and v, k at 0
        torch.testing.assert_close(enc.blocks[0].attn(x)[0],
                                   u.blocks[0].attn(x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mapped["proj"], state["vision_proj.weight"].t())
    assert torch.equal(mapped["text.token_embedding.weight"], target["text.token_embedding.weight"])


def test_script_writes_a_file_that_loads_strictly(tmp_path):
    out = tmp_path / "init.safetensors"
    assert _script().main(["vificlip_demo", str(out)]) == 0
    model = create_model("vificlip_demo", checkpoint=str(out))
    umt = create_model("umt_demo", checkpoint="builtin:umt_demo_synthetic")
    assert torch.equal(model.encoder.blocks[5].mlp.fc2.weight, umt.vision_encoder.encoder.blocks[5].mlp.fc2.weight)
