"""Write a DeepSpeed ZeRO checkpoint folder the way Lightning's DeepSpeed strategy does, on the CPU; run as a
program (one process, gloo), not collected by pytest.

    python tests/deepspeed_ckpt_script.py STAGE CKPT_DIR REFERENCE.pt [--legacy-wrapper]

Lightning's DeepSpeed strategy refuses the CPU, so this does by hand what it does on a GPU: the LightningModule itself
is the engine's module (Lightning >= 2.1; keys ``model.vision_encoder...``), ``deepspeed.initialize`` with a torch
optimizer and ``zero_allow_untested_optimizer``, optimizer steps through ``training_step``, then
``engine.save_checkpoint(CKPT_DIR, client_state=<Lightning checkpoint without state_dict / optimizer_states>,
tag="checkpoint")`` as ``DeepSpeedStrategy.save_checkpoint`` writes it (CKPT_DIR/latest, CKPT_DIR/checkpoint/...).
``--legacy-wrapper`` wraps the module in ``_forward_module`` as Lightning < 2.1 did. DeepSpeed's own broadcast and
ZeRO-3 partitioning run unpatched on the real model (they broke on a 0-d ``UMT.temp`` before it became (1,)).

REFERENCE.pt gets {"init": state dict before training, "trained": full (gathered) fp32 state dict after the steps,
"stage": STAGE, "losses": [...]}, with keys of the UMT (``model.`` removed).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0", "WORLD_SIZE": "1",
                   "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
    os.environ.setdefault(key, value)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

STEPS = 2
PREFIX = "model."


class _LegacyWrapper(nn.Module):
    """Lightning < 2.1's _LightningModuleWrapperBase: the LightningModule under ``_forward_module``."""

    def __init__(self, module: pl.LightningModule) -> None:
        super().__init__()
        self._forward_module = module

    def forward(self, *args, **kwargs):
        return self._forward_module(*args, **kwargs)


def umt_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    assert all(k.startswith(PREFIX) for k in state), list(state)[:5]
    return {k[len(PREFIX):]: v.detach().clone() for k, v in state.items()}


def make_batch(step: int, batch_size: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(2, 128, (batch_size, length), generator=g)
    ids[:, 0] = 1
    mask = (torch.arange(length)[None] < torch.tensor([length, 7, 5])[:, None]).long()
    return {"video": torch.randn(batch_size, 4, 3, 64, 64, generator=g), "video_index": torch.arange(batch_size),
            "input_ids": ids * mask, "attention_mask": mask}


def main(stage: int, ckpt_dir: str, reference: str, legacy_wrapper: bool = False) -> None:
    torch.set_num_threads(1)
    import deepspeed

    from vidtldr_pl.tasks import RetrievalTask

    torch.manual_seed(0)
    task = RetrievalTask("umt_tiny", lr=1e-3, weight_decay=0.02)
    task.eval()  # no dropout: the steps are deterministic (the reference is read from the engine anyway)
    # A CPU Trainer attached to the module: the client state is what Lightning writes beside the shards.
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, max_steps=STEPS, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(task)
    task.trainer = trainer
    task.log = task.log_dict = lambda *a, **k: None  # no loop result collection outside trainer.fit
    init = umt_state(task)

    # configure_optimizers' parameter groups (its LR schedule needs a running fit)
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": task.hparams.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=task.hparams.lr)
    config = {
        "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage, "contiguous_gradients": True, "overlap_comm": False,
                              "allgather_partitions": True, "reduce_scatter": True,
                              "allgather_bucket_size": 200_000_000, "reduce_bucket_size": 200_000_000,
                              "sub_group_size": 1_000_000_000_000,
                              # ZeRO-3: partition every tensor of 1000+ values (the default 1e5 would keep all of
                              # this tiny model whole, as it keeps UMT.temp, biases and norms of a real one)
                              "stage3_param_persistence_threshold": 1000},
    }
    deepspeed.init_distributed(dist_backend="gloo")
    module = _LegacyWrapper(task) if legacy_wrapper else task
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config,
                                           model_parameters=task.parameters(), dist_init_required=False)
    assert engine.zero_optimization_stage() == stage, engine.zero_optimization_stage()

    # Lightning's forward redirection: engine(...) runs training_step through the engine's hooks
    task.forward = task.training_step
    losses = []
    for step in range(STEPS):
        loss = engine(make_batch(step), step)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))

    params = list(engine.module.parameters())
    partitioned = sum(p.data.numel() == 0 for p in params)  # ZeRO-3 leaves an empty .data outside forward
    assert (partitioned > 0) == (stage == 3), (stage, partitioned)
    with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
        root = engine.module._forward_module if legacy_wrapper else engine.module
        trained = umt_state(root)
    assert all(v.numel() > 0 for v in trained.values()), "ZeRO-3 parameters were not gathered"

    client_state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    client_state = {k: v for k, v in client_state.items() if k not in ("state_dict", "optimizer_states")}
    engine.save_checkpoint(ckpt_dir, client_state=client_state, tag="checkpoint")
    torch.save({"init": init, "trained": trained, "stage": stage, "losses": losses,
                "partitioned": int(partitioned), "num_params": len(params)}, reference)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a gloo group left alive can abort the interpreter at exit


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]), args[1], args[2], legacy_wrapper="--legacy-wrapper" in sys.argv)
