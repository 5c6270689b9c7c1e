"""transformers ``VideoMAEModel`` and ``VideoMAEForVideoClassification``: merging in place.

Blocks (``VideoMAELayer``): ``x + attention.output(attention.attention(layernorm_before(x)))``,
``x + output.dense(intermediate(layernorm_after(x)))`` (q / v biases, no key bias). Attention: "explicit" when the
model is configured ``attn_implementation="eager"``, "fused" (sdpa) otherwise. Prefix tokens: none (VideoMAE has no
CLS), except with ``use_mean_pooling=False``, where the classifier reads token 0: it is then protected, so the head
still reads that patch. Tokens: ``(num_frames / tubelet) x (image / patch)^2`` for the configured input.

Pooling (documented choice): ``...ForVideoClassification`` pools ``fc_norm(last_hidden_state.mean(1))``; while the
encoder merges, that mean becomes the size-weighted one, sum(s_i x_i) / sum(s_i) (each merged token counts for the
patches it holds, as issue 24 asks of a model's own averaging). It equals our ``videomae_b16`` built with
``size_weighted_pool=True`` (``tests/test_foreign_videomae_agreement.py``); our presets' default is the plain mean
of the official vid-TLDR / VideoMAE evaluation. Without a merge (sizes all one) both are the plain mean, bit for bit.
``VideoMAEModel``'s ``last_hidden_state`` holds the merged tokens: their sizes are in ``last_merge_state.size``.
``VideoMAEForPreTraining`` is refused (its decoder needs every visible token in place).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .core import UnsupportedModelError, head_split, qualified_names, register_family
from .hf_common import TransformersAdapter, hf_checkpointing_handover
from .hooks import size_weighted_classifier_input

_MODEL = "transformers.models.videomae.modeling_videomae.VideoMAEModel"
_PRETRAINING = "transformers.models.videomae.modeling_videomae.VideoMAEForPreTraining"


@register_family
class HFVideoMAE(TransformersAdapter):
    name = "transformers VideoMAEModel / VideoMAEForVideoClassification"
    classes = (_MODEL,)
    pooling = ("...ForVideoClassification's fc_norm(mean of the tokens) becomes fc_norm(size-weighted mean), as our "
               "videomae_b16 with size_weighted_pool=True; with use_mean_pooling=False token 0 is protected")

    def encoders(self, model: nn.Module) -> list[nn.Module]:
        if any(_PRETRAINING in qualified_names(m) for m in model.modules()):
            raise UnsupportedModelError(
                f"{type(model).__module__}.{type(model).__qualname__}: VideoMAEForPreTraining cannot merge in place "
                "(its decoder puts every visible token back at its masked position); merge VideoMAEModel or "
                "VideoMAEForVideoClassification")
        return super().encoders(model)

    # ---------------------------------------------------------------- the encoder
    def blocks(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def block_runner(self, encoder: nn.Module) -> nn.Module:
        return encoder.encoder

    def num_prefix_tokens(self, encoder: nn.Module) -> int:
        return 0 if encoder.config.use_mean_pooling else 1

    def num_tokens(self, encoder: nn.Module) -> int | None:
        return int(encoder.embeddings.num_patches)


    # ---------------------------------------------------------------- one block
    def attn_input(self, block: nn.Module, x: Tensor) -> Tensor:
        return block.layernorm_before(x)

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        attn = block.attention.attention
        q, k, v = attn.query(x), attn.key(x), attn.value(x)
        if getattr(attn, "q_bias", None) is not None:  # releases that keep q / v biases as parameters
            q, v = q + attn.q_bias, v + attn.v_bias
        heads = attn.num_attention_heads
        return head_split(q, heads), head_split(k, heads), head_split(v, heads), float(attn.attention_head_size ** -0.5)

    def attn_output(self, block: nn.Module, ctx: Tensor) -> Tensor:
        out = block.attention.output
        return out.dropout(out.dense(ctx))

    def mlp_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        out = block.output
        return out.dropout(out.dense(block.intermediate(block.layernorm_after(x))))

    # ---------------------------------------------------------------- model level
    def install_pooling(self, model: nn.Module, encoder: nn.Module) -> list[RemovableHandle]:
        """The classifier's ``fc_norm(mean)`` reads the size-weighted mean (a pre-hook on ``fc_norm``)."""
        handles = hf_checkpointing_handover(encoder, encoder.encoder, encoder.encoder.layer)
        for module in model.modules():
            if getattr(module, "videomae", None) is encoder and getattr(module, "fc_norm", None) is not None:
                handles += size_weighted_classifier_input(encoder, module.fc_norm, skip=0)
        return handles


__all__ = ["HFVideoMAE"]
