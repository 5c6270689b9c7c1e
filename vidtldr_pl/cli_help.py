"""The short ``--help`` of evaluate.py and train.py: what the command does, the options a user needs, examples.
Light on purpose (no Lightning import), so that ``--help`` answers at once; LightningCLI's own help (every Trainer /
model / data flag, ~500 lines) stays available as ``--help-all``.
"""
from __future__ import annotations

import sys
import textwrap
from importlib import resources
from pathlib import Path

HELP_FLAGS = ("-h", "--help")
HELP_ALL_FLAG = "--help-all"

_COMMON = """\
  --config FILE       the run's YAML; repeat to stack files (--config msrvtt_umt.yaml --config strategies/ddp.yaml).
                      A shipped name (demo_umt.yaml, msrvtt_umt.yaml, ...) is found from any directory.
  --data.init_args.data_root DIR
                      the benchmark's folder (anno_downstream/ and videos/) in the dataset configs
  --model.init_args.checkpoint FILE
                      weights: an official .pth, a .safetensors, or `python -m vidtldr_pl.export` of a training run
  --merge.method NAME merge with this one method (none, tome, vidtldr, vidtldr_repshift, random, ...); it replaces
                      the config's TokenMerging callback and, in evaluate.py, its `compare` rows
  --merge.r R         tokens removed per block, e.g. [600,200,100], or one number / fraction at --merge.layers;
                      without --merge.method it changes r wherever the config merges (callback and `compare` rows)
  --merge.layers L    the blocks a single r applies to, e.g. [0,1,2]"""

_TRAINER = """  --trainer.devices N, --trainer.precision 16-mixed|bf16-mixed|32-true, --trainer.accelerator cpu|gpu"""

EVALUATE = """\
usage: evaluate.py --config CONFIG [options]

Evaluate a video model on a benchmark, as configured in a YAML file (model and checkpoint, data, token merging).
Each merge setting in the config's `compare` list (or the config's single setting) is one run; the runs print as
one table (retrieval R@1/5/10 and MdR both ways, or top-1/top-5; GFLOPs, tokens per layer, videos/s) and are
written as JSON.

Options:
{common}
  --compare ROWS      the merge settings to compare, one table row each, as a YAML list:
                      '[{{name: none, method: none}}, {{method: vidtldr, r: [600,200,100]}}]'
  --split test|validate
                      the annotation to evaluate (default: test)
  --results FILE      the JSON file (default: results.json next to the logs, else outputs/results_<time>.json)
{trainer}

Examples:
  # the embedded demo: no merging, ToMe and vid-TLDR on the synthetic benchmark (CPU, a few minutes)
  python evaluate.py --config demo_umt.yaml
  # MSRVTT 1k-A with the official fine-tuned UMT-B/16 and the paper's vid-TLDR schedule
  python evaluate.py --config msrvtt_umt.yaml --data.init_args.data_root=/data/msrvtt \\
      --model.init_args.checkpoint=/ckpt/umt_b16_msrvtt_ft.pth
  # the demo's comparison at another merge schedule, results into a chosen file
  python evaluate.py --config demo_umt.yaml --merge.r=[48,24,12] --results=r48.json
{more}"""

TRAIN = """\
usage: train.py --config CONFIG [options]

Fine-tune a video model as configured in a YAML file: model and starting checkpoint, data, optimiser schedule,
strategy, and token merging (the config's TokenMerging callback, or --merge.*), active while training. Writes
checkpoints (last and best by the validation metric) and the resolved config (config.yaml) into the run's folder.

Options:
{common}
  --ckpt_path FILE    resume a killed run from its checkpoint ("last": the newest in the run folder)
{trainer}
  --trainer.max_epochs N, --trainer.accumulate_grad_batches N, --data.init_args.batch_size N

Examples:
  # retrain the demo model from scratch on the synthetic benchmark (CPU; stage 1 of README's recipe)
  python train.py --config demo_umt.yaml --model.init_args.checkpoint=null --trainer.precision=bf16-mixed
  # fine-tune UMT-B/16 on MSRVTT with vid-TLDR on 4 GPUs (DDP)
  python train.py --config msrvtt_umt.yaml --config strategies/ddp.yaml --trainer.devices=4 \\
      --data.init_args.data_root=/data/msrvtt --model.init_args.checkpoint=/ckpt/umt_b16_pretrained.pth
  # resume that run after a kill
  python train.py --config msrvtt_umt.yaml --config strategies/ddp.yaml --trainer.devices=4 \\
      --data.init_args.data_root=/data/msrvtt --ckpt_path=<run folder>/checkpoints/last.ckpt
{more}"""

_MORE = """
More:
  --help-all          every option (Trainer, model, data: LightningCLI's full help)
  --model.help CLASS  the arguments of one model class (e.g. --model.help vidtldr_pl.tasks.RetrievalTask);
                      --data.help CLASS likewise
  --print_config      print the resolved config and exit
  Any config key can be set as --<key>=<value>, e.g. --model.init_args.k_test=64.
{configs}
"""


def config_dir() -> Path:
    """The configs that ship with the package: the repository's ``configs/`` folder, installed as the package
    ``vidtldr_pl.configs`` (pyproject.toml / setup.py); the folder itself in a checkout that is not installed."""
    try:
        return Path(str(resources.files("vidtldr_pl.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def short_help(stage: str, configs: Path | None = None) -> str:
    """The short help of ``evaluate.py`` (stage "evaluate") or ``train.py`` (stage "fit"), listing the shipped
    configs of ``configs`` (None: none listed)."""
    names = sorted(p.relative_to(configs).as_posix() for p in configs.rglob("*.yaml")) if configs else []
    configs = textwrap.fill("Shipped configs: " + (", ".join(names) or "none"), width=118, initial_indent="  ",
                            subsequent_indent="    ", break_on_hyphens=False)
    template = TRAIN if stage == "fit" else EVALUATE
    return template.format(common=_COMMON, trainer=_TRAINER, more=_MORE.format(configs=configs))


def help_requested(argv: list[str]) -> str | None:
    """"short" for -h / --help, "all" for --help-all, None otherwise (a value after --config is never a flag)."""
    if HELP_ALL_FLAG in argv:
        return "all"
    if any(a in HELP_FLAGS for a in argv):
        return "short"
    return None


def exit_on_short_help(stage: str, argv: list[str]) -> None:
    """``-h`` / ``--help``: print the short help and exit 0, before anything heavy is imported."""
    if help_requested(argv) == "short":
        print(short_help(stage, config_dir()))
        sys.exit(0)


__all__ = ["HELP_ALL_FLAG", "config_dir", "exit_on_short_help", "help_requested", "short_help"]
