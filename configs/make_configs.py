"""Regenerate the retrieval configs: python configs/make_configs.py (schedules: official_behaviour.md section 4)."""
from pathlib import Path

# dataset: (DataModule class, r for UMT-B/16, r for UMT-L/16, description)
DATASETS = {
    "msrvtt": ("MSRVTTDataModule", [600, 200, 100], [550, 400], "MSRVTT 1k-A test (msrvtt_ret_test1k)"),
    "msvd": ("MSVDDataModule", [450, 250, 200], [600, 200, 100, 100], "MSVD test (msvd_ret_test)"),
    "didemo": ("DiDeMoDataModule", [250, 150, 150, 150], [800, 100], "DiDeMo test, paragraphs, first 30 s"),
    "anet": ("ActivityNetDataModule", [500], [600, 300], "ActivityNet val, paragraphs"),
    "lsmdc": ("LSMDCDataModule", [400, 150, 150], [250, 250, 200, 200], "LSMDC test 1000"),
    "ssv2_label": ("SSv2LabelDataModule", [200, 200, 200, 100], [450, 250, 100], "SSv2-label val (small)"),
    "ssv2_template": ("SSv2TemplateDataModule", [400, 300], [350, 300, 100, 50], "SSv2-template val (small)"),
}
MODELS = {"umt": ("umt_b16", "bert-base-uncased"), "umt_l": ("umt_l16", "bert-large-uncased")}
# fine-tuning (official exp/finetuning/ret_*/b16_25m.py): lr, epochs, warm-up epochs, drop-path
TRAIN_B16 = {
    "msrvtt": (1e-5, 10, 1, 0.2), "anet": (4e-5, 20, 1, 0.1), "didemo": (2e-5, 12, 1, 0.1), "lsmdc": (2e-5, 10, 1, 0.2),
    "msvd": (1e-5, 5, 0, 0.2), "ssv2_label": (5e-5, 10, 0, 0.1), "ssv2_template": (1e-4, 10, 1, 0.1),
}
# L/16: official_behaviour.md records MSRVTT only; the other L/16 configs start from the B/16 values (marked)
TRAIN_L16 = {"msrvtt": (2e-5, 7, 1, 0.3)}

TEMPLATE = """# {desc} with {model} (12 frames, 224 px) and vid-TLDR r = {r} (the paper's schedule).
# python evaluate.py --config {name} --data.init_args.data_root=/path/to/{dataset} --model.init_args.checkpoint=/path/to/ckpt
model:
  class_path: vidtldr_pl.tasks.RetrievalTask
  init_args:
    model: {model}
    checkpoint: checkpoints/{model}_{dataset}_ft.pth   # official fine-tuned UMT checkpoint (see README)
    k_test: 128
    # fine-tuning (train.py){train_note}
    lr: {lr}
    warmup_epochs: {warmup}
    weight_decay: 0.02
    min_lr_ratio: 0.01
    vision_overrides: {{drop_path_rate: {drop_path}}}
data:
  class_path: data_modules.retrieval.{dm}
  init_args:
    data_root: data/{dataset}
    tokenizer: {tokenizer}
    num_frames: 12
    img_size: 224
    batch_size: 32
    eval_batch_size: 16
    num_workers: 4
trainer:
  accelerator: auto
  devices: 1
  precision: 16-mixed
  max_epochs: {epochs}
  logger: false
  callbacks:
    - class_path: vidtldr_pl.callbacks.TokenMerging
      init_args:
        method: vidtldr
        r: {r}
        attention: fused
# Several merge settings in one evaluation (text features encoded once), e.g.:
# compare:
#   - {{name: no merging, method: none}}
#   - {{name: ToMe, method: tome, r: {r}}}
#   - {{name: vid-TLDR, method: vidtldr, r: {r}}}
"""

if __name__ == "__main__":
    here = Path(__file__).parent
    for dataset, (dm, r_b, r_l, desc) in DATASETS.items():
        for suffix, (model, tokenizer) in MODELS.items():
            name = f"{dataset}_{suffix}.yaml"
            r = r_b if model == "umt_b16" else r_l
            official = TRAIN_B16 if model == "umt_b16" else TRAIN_L16
            lr, epochs, warmup, drop_path = official.get(dataset, TRAIN_B16[dataset])
            note = "" if dataset in official else " -- UMT-B/16 values; check the official l16 file"
            (here / name).write_text(TEMPLATE.format(
                desc=desc, model=model, r=r, name=name, dataset=dataset, dm=dm, tokenizer=tokenizer, lr=lr,
                epochs=epochs, warmup=warmup, drop_path=drop_path, train_note=note))
