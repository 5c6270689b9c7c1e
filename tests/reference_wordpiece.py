# TEST-ONLY REFERENCE: vidtldr_pl/text/tokenizer.py as of commit ed3ad21 (the pure-Python WordPiece the library
# used before it moved to HF `tokenizers`), kept verbatim below this header so that tests/test_tokenizer_parity.py
# can check the library's ids against it. Not imported by the library; do not use it outside tests.
"""A pure-Python BERT WordPiece tokenizer reproducing HF ``BertTokenizer`` (the Python "slow" one).

Two flavors (``flavor=``):

* ``"hf"`` (default): HF ``BertTokenizer`` (slow, checked against transformers 4.32.1 and 4.57.6):
  ``[CLS] pieces [SEP]``, NFC step.
* ``"umt"``: the tokenizer the official UMT / vid-TLDR code actually runs, ``models/backbones/bert/
  tokenization_bert.py`` -- an ALBEF-era copy of the HF class (via Singularity / VINDLU) whose
  ``build_inputs_with_special_tokens`` returns ``[CLS] X`` for a single text: **no trailing [SEP]**; truncation keeps
  ``max_length - 1`` word pieces. Its BasicTokenizer also predates the NFC step (a no-op when lower-casing, since
  accent stripping applies NFD anyway; it only matters with ``do_lower_case=False``). Checkpoints fine-tuned by the
  official code saw texts without ``[SEP]``, so use this flavor to reproduce official features and scores.

Pipeline per text (as ``PreTrainedTokenizer.tokenize`` + ``BertTokenizer._tokenize``):

1. special-token strings present in the text (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ``[MASK]``, exact case) are
   split out and kept whole; the rest is lower-cased one character at a time (so a final capital sigma becomes
   ``σ``, not ``ς``);
2. BasicTokenizer: drop NUL, U+FFFD and control characters (Unicode category C*, except tab / newline / CR), map
   whitespace (space, tab, newline, CR, category Zs) to spaces, put spaces around CJK ideographs, NFC-normalise
   (``"hf"`` only), split on whitespace; per word: lower-case, strip accents (NFD, drop category Mn), split off
   every punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, or category P*);
3. WordPiece: greedy longest-match-first with ``##`` continuations; a word longer than 100 characters, or one that
   cannot be covered, becomes ``[UNK]``.

``__call__`` adds ``[CLS] ... [SEP]`` (``"umt"``: ``[CLS] ...``), truncates word pieces (never the special tokens)
and pads on the right.
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
REQUIRED_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP)
VOCAB_FILE = "vocab.txt"
Flavor = Literal["hf", "umt"]

_CACHE_LIMIT = 1 << 18  # distinct raw words remembered before the cache is cleared


# ------------------------------------------------------------------------------------------ character classes (HF)
def _is_whitespace(ch: str) -> bool:
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_chinese_char(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# ASCII control characters other than tab / newline / CR (all category Cc) and DEL
_ASCII_DROP = {i: None for i in list(range(0, 9)) + [11, 12] + list(range(14, 32)) + [127]}
_ASCII_DROP.update({9: " ", 10: " ", 13: " "})


def _clean_text(text: str) -> str:
    if text.isascii():
        return text.translate(_ASCII_DROP)
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


def _tokenize_chinese_chars(text: str) -> str:
    if text.isascii():
        return text
    out = []
    for ch in text:
        if _is_chinese_char(ord(ch)):
            out.extend((" ", ch, " "))
        else:
            out.append(ch)
    return "".join(out)


def _lower(text: str) -> str:
    # HF lower-cases non-special text one character at a time (re.sub over "(.+?)"); str.lower on a whole string
    # differs only by Python's final-sigma rule.
    if "\u03a3" in text:
        return "".join(ch.lower() for ch in text)
    return text.lower()


def _strip_accents(text: str) -> str:
    if text.isascii():
        return text
    text = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _split_on_punc(text: str) -> list[str]:
    out: list[list[str]] = []
    start_new = True
    for ch in text:
        if _is_punctuation(ch):
            out.append([ch])
            start_new = True
        else:
            if start_new:
                out.append([])
            start_new = False
            out[-1].append(ch)
    return ["".join(x) for x in out]


# ------------------------------------------------------------------------------------------------------- vocabulary
def load_vocab(vocab_file: str | os.PathLike) -> "OrderedDict[str, int]":
    """Token -> id, one token per line (HF ``load_vocab``: universal newlines, a later duplicate wins)."""
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocab file not found: {path}")
    vocab: OrderedDict[str, int] = OrderedDict()
    with open(path, encoding="utf-8") as reader:
        tokens = reader.readlines()
    for index, token in enumerate(tokens):
        vocab[token.rstrip("\n")] = index
    return vocab


def build_vocab(texts: Iterable[str], min_freq: int = 1, lower_case: bool = True,
                char_pieces: bool = False) -> list[str]:
    """A small vocab from example texts: ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, then words.

    Words are the BasicTokenizer output (punctuation included) seen at least ``min_freq`` times, most frequent first
    (ties alphabetical). ``char_pieces`` also adds every character seen, alone and as a ``##`` continuation, so that
    unseen words made of seen characters are spelled out instead of becoming ``[UNK]``.
    """
    if min_freq < 1:
        raise ValueError(f"min_freq = {min_freq}: must be >= 1")
    basic = _BasicTokenizer(lower_case)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(basic.tokenize(text))
    words = sorted((w for w, c in counts.items() if c >= min_freq and w not in SPECIAL_TOKENS),
                   key=lambda w: (-counts[w], w))
    vocab = list(SPECIAL_TOKENS) + words
    if char_pieces:
        seen = set(vocab)
        chars = sorted({ch for w in counts for ch in w})
        for piece in chars + ["##" + ch for ch in chars]:
            if piece not in seen:
                vocab.append(piece)
                seen.add(piece)
    return vocab


class _BasicTokenizer:
    """HF ``BasicTokenizer`` (never_split handled by the caller), with a per-word cache."""

    def __init__(self, do_lower_case: bool = True, tokenize_chinese_chars: bool = True, nfc: bool = True) -> None:
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.nfc = nfc

    def words(self, text: str) -> list[str]:
        """Whitespace-separated words after (char-wise lower-casing,) cleaning, CJK spacing and (NFC)."""
        if self.do_lower_case:
            text = _lower(text)  # PreTrainedTokenizer.tokenize, before the BasicTokenizer
        text = _clean_text(text)
        if self.tokenize_chinese_chars:
            text = _tokenize_chinese_chars(text)
        if self.nfc and not text.isascii():
            text = unicodedata.normalize("NFC", text)
        return text.split()

    def split_word(self, word: str) -> list[str]:
        if self.do_lower_case:
            word = _strip_accents(word.lower())  # already lower-cased char-wise; this mirrors BasicTokenizer
        return [p for piece in _split_on_punc(word) for p in piece.split()]

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.words(text) for p in self.split_word(w)]


# -------------------------------------------------------------------------------------------------------- tokenizer
class BertWordPieceTokenizer:
    """HF-compatible ``BertTokenizer`` (uncased by default) without transformers / tokenizers.

    Args:
        vocab: token -> id (as read from ``vocab.txt``) or a token list (id = position).
        flavor: ``"hf"`` (HF BertTokenizer: ``[CLS] ... [SEP]``) or ``"umt"`` (official UMT: ``[CLS] ...``, no NFC);
            see the module docstring.
        do_lower_case: lower-case and strip accents (``bert-base-uncased`` / ``bert-large-uncased``).
        tokenize_chinese_chars: put spaces around CJK ideographs.
        max_input_chars_per_word: longer words become ``[UNK]``.
        model_max_length: ``max_length`` used when truncating without one (512 for BERT).
    """

    def __init__(
        self,
        vocab: "OrderedDict[str, int] | dict[str, int] | Sequence[str]",
        flavor: Flavor = "hf",
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        max_input_chars_per_word: int = 100,
        model_max_length: int = 512,
    ) -> None:
        if isinstance(vocab, dict):
            self.vocab: dict[str, int] = dict(vocab)
        else:
            self.vocab = {}
            for i, tok in enumerate(vocab):
                self.vocab[tok] = i
        if flavor not in ("hf", "umt"):
            raise ValueError(f"flavor = {flavor!r}: use 'hf' (HF BertTokenizer) or 'umt' (official UMT, no [SEP])")
        self.flavor = flavor
        self.append_sep = flavor == "hf"
        missing = [t for t in REQUIRED_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"vocab lacks the special token(s) {missing} (needs {list(REQUIRED_TOKENS)})")
        self.ids_to_tokens: dict[int, str] = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self.model_max_length = model_max_length
        self._basic = _BasicTokenizer(do_lower_case, tokenize_chinese_chars, nfc=flavor == "hf")
        self.special_tokens = list(SPECIAL_TOKENS)  # split out of texts even if absent from the vocab (-> [UNK])
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in self.special_tokens) + ")")
        self._cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, **kwargs) -> "BertWordPieceTokenizer":
        """Load ``vocab.txt`` (one token per line, id = line number)."""
        return cls(load_vocab(path), **kwargs)

    @classmethod
    def from_directory(cls, path: str | os.PathLike, **kwargs) -> "BertWordPieceTokenizer":
        """Load ``<path>/vocab.txt`` (e.g. a tokenizer saved by HF ``save_pretrained``)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {path}")
        return cls.from_vocab_file(path / VOCAB_FILE, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                        revision: str | None = None, local_files_only: bool = False,
                        **kwargs) -> "BertWordPieceTokenizer":
        """A local directory (with ``vocab.txt``) or vocab file if it exists, else a Hugging Face Hub repo name
        (e.g. ``bert-base-uncased``) whose ``vocab.txt`` is fetched with ``huggingface_hub.hf_hub_download``
        (the local HF cache is used when present)."""
        path = Path(os.path.expanduser(str(name_or_path)))
        if path.is_dir():
            return cls.from_directory(path, **kwargs)
        if path.is_file():
            return cls.from_vocab_file(path, **kwargs)
        name = str(name_or_path)
        if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
            raise FileNotFoundError(f"tokenizer path not found: {path} (a directory containing {VOCAB_FILE} or "
                                    f"the {VOCAB_FILE} file itself)")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as err:  # pragma: no cover - huggingface_hub comes with datasets
            raise OSError(f"could not download {VOCAB_FILE} of {name!r}: huggingface_hub is not installed; "
                          f"pass a local directory containing {VOCAB_FILE}") from err
        try:
            file = hf_hub_download(repo_id=name, filename=VOCAB_FILE, cache_dir=cache_dir, revision=revision,
                                   local_files_only=local_files_only)
        except Exception as err:  # offline, unknown repo, no vocab.txt in it...
            raise OSError(f"could not download {VOCAB_FILE} of {name!r} from the Hugging Face Hub "
                          f"({type(err).__name__}: {err}); pass a local directory containing {VOCAB_FILE}") from err
        return cls.from_vocab_file(file, **kwargs)

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_freq: int = 1, char_pieces: bool = False,
                   **kwargs) -> "BertWordPieceTokenizer":
        """A tokenizer over :func:`build_vocab` of ``texts`` (tests, synthetic data)."""
        lower = kwargs.get("do_lower_case", True)
        return cls(build_vocab(texts, min_freq=min_freq, lower_case=lower, char_pieces=char_pieces), **kwargs)

    def save_vocab(self, path: str | os.PathLike) -> Path:
        """Write the vocab, one token per line in id order, to ``path`` (a directory gets ``vocab.txt``)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        ids = sorted(self.ids_to_tokens)
        if ids != list(range(len(ids))):
            raise ValueError("vocab ids are not consecutive from 0; cannot be written as one token per line")
        tokens = [self.ids_to_tokens[i] for i in ids]
        bad = [t for t in tokens if "\n" in t or "\r" in t]
        if bad:
            raise ValueError(f"token {bad[0]!r} contains a line break")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in tokens)
        return path

    # --------------------------------------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_token_id(self) -> int:
        return self.vocab[PAD]

    @property
    def unk_token_id(self) -> int:
        return self.vocab[UNK]

    @property
    def cls_token_id(self) -> int:
        return self.vocab[CLS]

    @property
    def sep_token_id(self) -> int:
        return self.vocab[SEP]

    @property
    def mask_token_id(self) -> int | None:
        return self.vocab.get(MASK)

    # ------------------------------------------------------------------------------------------- tokenization
    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [UNK]
        vocab = self.vocab
        pieces: list[str] = []
        start, n = 0, len(word)
        while start < n:
            end = n
            cur = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = "##" + sub
                if sub in vocab:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                return [UNK]
            pieces.append(cur)
            start = end
        return pieces

    def _word_tokens(self, word: str) -> list[str]:
        return [p for w in self._basic.split_word(word) for p in self._wordpiece(w)]

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            unk = self.vocab[UNK]
            ids = tuple(self.vocab.get(t, unk) for t in self._word_tokens(word))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _chunks(self, text: str) -> list[tuple[str, bool]]:
        """(chunk, is_special) pieces of ``text``, special-token strings split out."""
        if "[" not in text:
            return [(text, False)]
        parts = self._special_re.split(text)
        return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without ``[CLS]`` / ``[SEP]``."""
        out: list[str] = []
        for chunk, special in self._chunks(text):
            if special:
                out.append(chunk)
            else:
                for w in self._basic.words(chunk):
                    out.extend(self._word_tokens(w))
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text (``[CLS] ... [SEP]``, flavor ``"umt"``: ``[CLS] ...``), not truncated."""
        ids: list[int] = []
        for chunk, special in self._chunks(text):
            if special:
                ids.append(self.vocab.get(chunk, self.unk_token_id))
            else:
                for w in self._basic.words(chunk):
                    ids.extend(self._word_ids(w))
        if add_special_tokens:
            return [self.cls_token_id, *ids, self.sep_token_id] if self.append_sep else [self.cls_token_id, *ids]
        return ids

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        unk = self.unk_token_id
        return [self.vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.ids_to_tokens.get(int(i), UNK) for i in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text as HF ``convert_tokens_to_string`` (join with spaces, glue ``##`` pieces)."""
        toks = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            toks = [t for t in toks if t not in self.special_tokens]
        return " ".join(toks).replace(" ##", "").strip()

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: str | bool = "max_length",
        truncation: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, torch.Tensor]:
        """Batch-encode like ``tokenizer(texts, padding=..., truncation=..., max_length=..., return_tensors="pt")``.

        Args:
            texts: B texts (a single string counts as a batch of one).
            max_length: L for ``padding="max_length"`` and the truncation limit (``model_max_length`` if None
                while truncating); includes ``[CLS]`` and ``[SEP]``.
            padding: ``"max_length"`` (pad every row to ``max_length``) or ``"longest"`` / True (to the longest row).
            truncation: drop word pieces from the end so that rows fit ``max_length``; ``[SEP]`` stays last
                (flavor ``"umt"``: rows are ``[CLS]`` + at most ``max_length - 1`` pieces, no ``[SEP]``).
            return_tensors: ``"pt"`` (the only supported value; None is accepted and means the same).

        Returns:
            ``input_ids`` (B, L) and ``attention_mask`` (B, L), both int64; rows are ``[CLS] pieces [SEP] [PAD]...``
            (``"umt"``: ``[CLS] pieces [PAD]...``) with mask 1 on every non-pad position.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors = {return_tensors!r}: only 'pt' is supported")
        if isinstance(texts, str):
            texts = [texts]
        if padding is True:
            padding = "longest"
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding = {padding!r}: use 'max_length' or 'longest'")
        if truncation and max_length is None:
            max_length = self.model_max_length
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        n_special = 2 if self.append_sep else 1
        if max_length is not None and max_length < n_special and (truncation or padding == "max_length"):
            raise ValueError(f"max_length = {max_length}: must be >= {n_special} to hold the special tokens")
        cls_id, sep_id, pad_id = self.cls_token_id, self.sep_token_id, self.pad_token_id
        tail = [sep_id] if self.append_sep else []
        rows: list[list[int]] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
            ids = self.encode(text, add_special_tokens=False)
            if truncation and len(ids) > max_length - n_special:
                ids = ids[: max_length - n_special]
            rows.append([cls_id, *ids, *tail])
        if not rows:
            raise ValueError("texts is empty")
        longest = max(len(r) for r in rows)
        if padding == "max_length":
            if longest > max_length:
                i = next(i for i, r in enumerate(rows) if len(r) > max_length)
                raise ValueError(f"texts[{i}] has {len(rows[i])} tokens > max_length = {max_length} and truncation "
                                 "is off: rows cannot be stacked")
            width = max_length
        else:
            width = longest
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
