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

TEMPLATE = """# {desc} with {model} (12 frames, 224 px) and vid-TLDR r = {r} (the paper's schedule).
# python evaluate.py --config {name} --data.init_args.data_root=/path/to/{dataset} --model.init_args.checkpoint=/path/to/ckpt
model:
  class_path: vidtldr_pl.tasks.RetrievalTask
  init_args:
    model: {model}
    checkpoint: checkpoints/{model}_{dataset}_ft.pth   # official fine-tuned UMT checkpoint (see README)
    k_test: 128
data:
  class_path: data_modules.retrieval.{dm}
  init_args:
    data_root: data/{dataset}
    tokenizer: {tokenizer}
    num_frames: 12
    img_size: 224
    eval_batch_size: 16
    num_workers: 4
trainer:
  accelerator: auto
  devices: 1
  precision: 16-mixed
  logger: false
  callbacks:
    - class_path: vidtldr_pl.callbacks.TokenMerging
      init_args:
        method: vidtldr
        r: {r}
        attention: fused
"""

if __name__ == "__main__":
    here = Path(__file__).parent
    for dataset, (dm, r_b, r_l, desc) in DATASETS.items():
        for suffix, (model, tokenizer) in MODELS.items():
            name = f"{dataset}_{suffix}.yaml"
            r = r_b if model == "umt_b16" else r_l
            (here / name).write_text(TEMPLATE.format(desc=desc, model=model, r=r, name=name, dataset=dataset, dm=dm, tokenizer=tokenizer))
