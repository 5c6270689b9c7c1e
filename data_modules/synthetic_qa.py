"""Video QA over the embedded synthetic benchmark (``vidtldr_pl.data_modules.synthetic``): questions from the same grammar.

Every clip's annotation lists its named foreground objects (shape, colour, size, direction; distinct shapes and
distinct colours within a clip). Five question types, each with a unique answer by construction:

* colour: "what colour is the <shape>" -> colour
* shape: "what shape is the <colour> object" -> shape
* direction: "which way does the <colour> <shape> move" -> left / right / up / down
* count: "how many objects move" -> one / two: the named foreground objects (the distractors are unnamed, as in the
  captions)
* size: "what size is the <colour> <shape>" -> small / large

Training splits get all five questions per clip; evaluation splits one per clip, the type cycling with the clip index
(balanced types, one video decode per question). Question choice depends only on (seed, split, clip index).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .generated import GeneratedOnFirstUse
from .qa import MultipleChoiceDataModule, VideoQADataModule
from .synthetic import COLOURS, MOTIONS, SHAPES, SIZES, SPLITS, SyntheticConfig, ensure_dataset, vocabulary

QUESTION_TYPES = ("colour", "shape", "direction", "count", "size")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_WORDS = ("what", "colour", "is", "the", "shape", "object", "which", "way", "does", "move", "how", "many",
                  "objects", "size")


def answer_list() -> list[str]:
    """Every answer the grammar can give (fixed order)."""
    return [*COLOURS, *SHAPES, *MOTIONS, *SIZES, *COUNT_WORDS]


def qa_vocabulary() -> list[str]:
    """The caption vocabulary plus the question and answer words (special tokens first)."""
    base = vocabulary()
    extra = sorted(set(QUESTION_WORDS) | set(answer_list()) - set(base))
    return base + [w for w in extra if w not in base]


def question(objects: list[dict[str, Any]], qtype: str, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer) of type ``qtype`` about one of ``objects`` (dicts with shape / colour / size / motion)."""
    o = objects[int(rng.integers(len(objects)))]
    if qtype == "colour":
        return f"what colour is the {o['shape']}", o["colour"]
    if qtype == "shape":
        return f"what shape is the {o['colour']} object", o["shape"]
    if qtype == "direction":
        return f"which way does the {o['colour']} {o['shape']} move", o["motion"]
    if qtype == "size":
        return f"what size is the {o['colour']} {o['shape']}", o["size"]
    if qtype == "count":
        return "how many objects move", COUNT_WORDS[len(objects)]
    raise ValueError(f"question type must be one of {QUESTION_TYPES}, got {qtype!r}")


def qa_entries(clips: list[dict[str, Any]], split: str, seed: int, all_types: bool) -> list[dict[str, Any]]:
    """QA annotations (video, question, answer, question_id, type) of a synthetic split's clip annotations."""
    out = []
    for i, clip in enumerate(clips):
        rng = np.random.default_rng([seed, 10 + SPLITS[split], i])
        types = QUESTION_TYPES if all_types else (QUESTION_TYPES[i % len(QUESTION_TYPES)],)
        for t in types:
            q, a = question(clip["objects"], t, rng)
            out.append({"video": clip["video"], "question": q, "answer": a, "question_id": f"{split}_{i}_{t}",
                        "type": t})
    return out


def ensure_qa_dataset(root: str | Path, cfg: SyntheticConfig, sizes: dict[str, int]) -> Path:
    """The synthetic clips (``ensure_dataset``) plus anno/qa_<split>_<n>.json, anno/qa_answer_list.json and
    qa_tokenizer/vocab.txt. Returns the dataset folder."""
    out = ensure_dataset(root, cfg, sizes)
    for split, n in sizes.items():
        if n <= 0:
            continue
        clips = json.loads((out / "anno" / f"{split}_{n}.json").read_text())
        path = out / "anno" / f"qa_{split}_{n}.json"
        path.write_text(json.dumps(qa_entries(clips, split, cfg.seed, all_types=split == "train")))
    (out / "anno" / "qa_answer_list.json").write_text(json.dumps(answer_list()))
    vocab = out / "qa_tokenizer" / "vocab.txt"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(qa_vocabulary()) + "\n")
    return out


class SyntheticQADataModule(GeneratedOnFirstUse, VideoQADataModule):
    """QA over the embedded benchmark, generated into cache_dir on first use from the seed.

    Args: cache_dir, seed, num_train / num_val / num_test clips, clip_frames / clip_size of the written clips;
    everything else as VideoQADataModule (num_frames, img_size, batch sizes, workers, ...).
    """

    annotation_prefix = "qa_"

    def __init__(self, cache_dir: str = ".cache/synthetic", seed: int = 0, num_train: int = 4000, num_val: int = 200,
                 num_test: int = 500, clip_frames: int = 16, clip_size: int = 128, num_frames: int = 8,
                 img_size: int = 96, max_q_len: int = 12, **kwargs: Any) -> None:
        self.cache_dir, self.clip_config = cache_dir, SyntheticConfig(seed=seed, frames=clip_frames, size=clip_size)
        self.generated_sizes = {"train": num_train, "val": num_val, "test": num_test}
        pending = Path(cache_dir) / "pending"
        super().__init__(test_annotation=str(pending / "qa_test.json"), answer_list=str(pending / "answers.json"),
                         video_root=str(pending / "videos"), val_annotation=str(pending / "qa_val.json"),
                         train_annotation=str(pending / "qa_train.json"), tokenizer=str(pending / "qa_tokenizer"),
                         tokenizer_flavor="umt", max_q_len=max_q_len, num_frames=num_frames, img_size=img_size,
                         seed=seed, **kwargs)

    def generate(self, sizes: dict[str, int]) -> Path:
        return ensure_qa_dataset(self.cache_dir, self.clip_config, sizes)

    def use(self, folder: Path) -> None:
        super().use(folder)
        h = self.hparams
        h.tokenizer, h.answer_list = str(folder / "qa_tokenizer"), str(folder / "anno" / "qa_answer_list.json")
        self._anns, self._answer_list, self._tokenizer = {}, None, None


# ---------------------------------------------------------------------- multiple choice
def mc_entries(clips: list[dict[str, Any]], seed: int, num_options: int = 5) -> list[dict[str, Any]]:
    """MSRVTT-MC-style entries over a synthetic split: each clip's caption among ``num_options - 1`` captions of other
    clips (distinct texts), at a position drawn from (seed, clip index)."""
    out = []
    for i, clip in enumerate(clips):
        rng = np.random.default_rng([seed, 20, i])
        wrong: list[str] = []
        for j in rng.permutation(len(clips)):
            caption = clips[int(j)]["caption"]
            if caption != clip["caption"] and caption not in wrong:
                wrong.append(caption)
            if len(wrong) == num_options - 1:
                break
        answer = int(rng.integers(num_options))
        out.append({"video": clip["video"], "caption": wrong[:answer] + [clip["caption"]] + wrong[answer:],
                    "answer": answer})
    return out


class SyntheticMCDataModule(MultipleChoiceDataModule):
    """Multiple choice (5 captions) over the synthetic retrieval test split, for the shipped retrieval demo model.

    Args: cache_dir, seed, num_test, clip_frames / clip_size (as SyntheticRetrievalDataModule); everything else as
    MultipleChoiceDataModule.
    """

    def __init__(self, cache_dir: str = ".cache/synthetic", seed: int = 0, num_test: int = 500, clip_frames: int = 16,
                 clip_size: int = 128, num_frames: int = 8, img_size: int = 96, max_txt_len: int = 24,
                 **kwargs: Any) -> None:
        self.cache_dir, self.clip_config = cache_dir, SyntheticConfig(seed=seed, frames=clip_frames, size=clip_size)
        self.num_test = num_test
        pending = Path(cache_dir) / "pending"
        super().__init__(test_annotation=str(pending / "mc_test.json"), video_root=str(pending / "videos"),
                         tokenizer=str(pending / "tokenizer"), tokenizer_flavor="umt", max_txt_len=max_txt_len,
                         num_frames=num_frames, img_size=img_size, **kwargs)

    def _resolve(self) -> None:
        """Generate the test split (once, into cache_dir), its MC entries, and point the options at them."""
        n = self.num_test
        out = ensure_dataset(self.cache_dir, self.clip_config, {"test": n})
        clips = json.loads((out / "anno" / f"test_{n}.json").read_text())
        path = out / "anno" / f"mc_test_{n}.json"
        path.write_text(json.dumps(mc_entries(clips, self.clip_config.seed)))
        h = self.hparams
        h.test_annotation, h.video_root, h.tokenizer = str(path), str(out / "videos"), str(out / "tokenizer")
        self._anns, self._tokenizer = None, None

    def prepare_data(self) -> None:
        self._resolve()

    def setup(self, stage: str) -> None:
        self._resolve()
        super().setup(stage)
