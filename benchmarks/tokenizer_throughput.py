"""Caption tokenisation throughput: the former pure-Python WordPiece (kept, test-only, in
tests/reference_wordpiece.py) against :class:`vidtldr_pl.text.BertWordPieceTokenizer` on HF ``tokenizers``.

One batch call ``tokenizer(captions, max_length=32)`` (what the retrieval data module runs at setup) on
``--captions`` captions of two kinds: the synthetic benchmark's grammar (``vidtldr_pl.data_modules.synthetic.sample_clip``, its
26-word vocab) and MSRVTT-like English (templates plus a long tail of made-up rare words; vocab built from 5,000 of
them with ``min_freq=2`` plus single-character pieces, so rare words split into pieces). Every timed run builds a fresh tokenizer (the old
one caches words: a second pass over the same captions would be faster than a data module's single pass). The new
tokenizer is timed with ``TOKENIZERS_PARALLELISM=false`` (1 thread) and with the Rust thread pool (all cores). The
ids of both are checked equal. Median of ``--repeats`` runs after one warm-up.

Usage::

    python benchmarks/tokenizer_throughput.py                      # print the table
    python benchmarks/tokenizer_throughput.py --write BENCHMARKS.md  # also (re)write the section there
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidtldr_pl.data_modules.synthetic import SyntheticConfig, sample_clip, vocabulary  # noqa: E402
from vidtldr_pl.text import BertWordPieceTokenizer, build_vocab  # noqa: E402

SECTION = "## Caption tokenisation throughput"
MAX_LENGTH = 32

SUBJECTS = ["a man", "a woman", "a girl", "a boy", "a person", "people", "a group of people", "two men", "a child",
            "a dog", "a cat", "a cartoon character", "a chef", "a reporter", "a band", "players", "someone", "a baby",
            "an old man", "a young woman", "the crowd", "a teacher", "students", "a couple"]
VERBS = ["is talking about", "is cooking", "is playing", "are dancing to", "is singing", "is driving", "is showing",
         "is explaining", "is riding", "is running on", "are watching", "is walking in", "is eating", "is holding",
         "is demonstrating", "is reviewing", "plays", "talks about", "shows how to make", "sings", "drives",
         "is being interviewed about", "is swimming in", "is painting", "is fixing", "are fighting in"]
OBJECTS = ["a car", "a song", "the guitar", "soccer", "a video game", "food", "a recipe", "the news", "a movie",
           "basketball", "the piano", "a bike", "the beach", "a kitchen", "a stage", "a horse", "a computer",
           "makeup", "a phone", "the street", "a pool", "a house", "a wall", "pasta", "the weather", "politics",
           "minecraft", "a tutorial", "an interview", "a trailer", "volleyball", "the ocean", "a race track"]
TAILS = ["", "", "", " in a kitchen", " on stage", " outside", " on a tv show", " at night", " with friends",
         " in front of a crowd", " while smiling", " in slow motion", " for the camera", " during a game",
         " in the rain", " and laughing", " in a music video", " on the news", " at a concert"]
ADJECTIVES = ["red", "blue", "small", "big", "funny", "beautiful", "old", "new", "animated", "famous", "black",
              "white", "young", "professional", "delicious", "fast"]


def rare_words(n: int, seed: int = 1) -> list[str]:
    """``n`` made-up words from syllables (names, brands, rare nouns: MSRVTT's long tail of ~29k distinct words)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "son", "ber", "gra", "vin", "tos", "zel", "rin", "po", "que", "dra", "mon"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def msrvtt_like(n: int, seed: int = 0) -> list[str]:
    """``n`` MSRVTT-style English captions (lower/upper case mixed, some punctuation, adjectives, numbers, and a
    rare word in one caption of five)."""
    rng = random.Random(seed)
    rare = rare_words(20_000)
    out = []
    for _ in range(n):
        obj = rng.choice(OBJECTS)
        if rng.random() < 0.2:
            obj = f"{obj} named {rng.choice(rare)}"
        if rng.random() < 0.3:
            article, _, noun = obj.partition(" ")
            obj = f"{article} {rng.choice(ADJECTIVES)} {noun}" if noun else f"{rng.choice(ADJECTIVES)} {obj}"
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {obj}{rng.choice(TAILS)}"
        if rng.random() < 0.1:
            text += f" for {rng.randint(2, 90)} minutes"
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.2:
            text = text.replace(" is ", "'s ", 1) if " is " in text else text
        out.append(text + rng.choice(["", "", ".", " .", "!"]))
    return out


def synthetic(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of the synthetic benchmark's grammar."""
    rng = np.random.default_rng(seed)
    cfg = SyntheticConfig(seed=seed)
    return [sample_clip(rng, cfg)[1] for _ in range(n)]


def load_reference():
    """The former pure-Python tokenizer module (tests/reference_wordpiece.py)."""
    spec = importlib.util.spec_from_file_location("reference_wordpiece", ROOT / "tests" / "reference_wordpiece.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(make: Callable[[], object], captions: list[str], repeats: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Median seconds of ``make()(captions, max_length=MAX_LENGTH)`` over ``repeats`` runs (one warm-up first)."""
    out = make()(captions, max_length=MAX_LENGTH)
    times = []
    for _ in range(repeats):
        tok = make()
        t0 = time.perf_counter()
        out = tok(captions, max_length=MAX_LENGTH)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(md_path: Path, body: str) -> None:
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    block = f"{SECTION}\n\n{body.rstrip()}\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt == -1 else nxt + 1
        text = text[:start] + block + ("\n" + text[end:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + block
    md_path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=50_000, help="captions per set")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="update the section in this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref = load_reference()
    english = msrvtt_like(args.captions)
    sets = {
        "synthetic grammar": (synthetic(args.captions), vocabulary()),
        "MSRVTT-like English": (english, build_vocab(english[:5000], min_freq=2, char_pieces=True)),
    }
    rows = []
    for name, (captions, vocab) in sets.items():
        pieces = None
        results = {}
        for label, make, parallel in (
            ("pure Python (before)", lambda: ref.BertWordPieceTokenizer(vocab, flavor="umt"), None),
            ("tokenizers, 1 thread", lambda: BertWordPieceTokenizer(vocab, flavor="umt"), "false"),
            ("tokenizers, all cores", lambda: BertWordPieceTokenizer(vocab, flavor="umt"), "true"),
        ):
            if parallel is not None:
                os.environ["TOKENIZERS_PARALLELISM"] = parallel
            seconds, out = timed(make, captions, args.repeats)
            results[label] = out["input_ids"]
            pieces = pieces or float(out["attention_mask"].sum(1).float().mean())
            rows.append((name, label, len(vocab), pieces, len(captions) / seconds, seconds))
        first = next(iter(results.values()))
        if not all(torch.equal(first, ids) for ids in results.values()):
            raise SystemExit(f"{name}: the tokenizers disagree on the ids")
    base = {name: cps for name, label, _, _, cps, _ in rows if label.startswith("pure")}
    command = shlex.join(["python", f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"Measured {_dt.date.today().isoformat()} on {cpu_model()}, {os.cpu_count()} cores available, load average "
        f"{os.getloadavg()[0]:.1f} at the end (Python {platform.python_version()}, tokenizers "
        f"{__import__('tokenizers').__version__}, torch {torch.__version__}).",
        "",
        f"Command: `{command}`",
        "",
        f"One call `tokenizer(captions, max_length={MAX_LENGTH})` (flavor \"umt\") on {args.captions:,} captions, a "
        "fresh tokenizer per run, median of "
        f"{args.repeats} runs after a warm-up; ids of all three checked equal. Tokens: mean non-pad tokens per row.",
        "",
        "| captions | tokenizer | vocab | tokens | captions/s | seconds | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, label, n_vocab, pieces, cps, seconds in rows:
        lines.append(f"| {name} | {label} | {n_vocab:,} | {pieces:.1f} | {cps:,.0f} | {seconds:.2f} | "
                     f"{cps / base[name]:.1f}x |")
    print("\n".join(lines))
    if args.write is not None:
        write_section(args.write, "\n".join(lines))
        print(f"updated {args.write}")


if __name__ == "__main__":
    main()
