"""BERT WordPiece tokenizer on HF ``tokenizers`` (Rust), with the ids of HF's Python ``BertTokenizer``.

Two flavors (``flavor=``):

* ``"hf"`` (default): HF ``BertTokenizer`` as transformers 4.x computes it (the Python class; 5.x renamed it
  ``BertTokenizerLegacy`` and changed it, see below): ``[CLS] pieces [SEP]``, NFC step.
* ``"umt"``: the tokenizer the official UMT / vid-TLDR code runs (``models/backbones/bert/tokenization_bert.py``, an
  ALBEF-era copy of that class): ``[CLS] pieces``, **no trailing [SEP]**, truncation keeps ``max_length - 1``
  pieces, no NFC step (which only matters with ``do_lower_case=False``). Checkpoints fine-tuned by the official code
  saw texts without ``[SEP]``: use it to reproduce official features and scores.

Who does what:

* Python (``_Normalizer``: ``str`` methods and translate tables built from ``unicodedata``): split out the
  special-token strings, lower-case (per character), drop control characters, map whitespace to spaces, space out CJK
  ideographs, NFC (``"hf"``) or NFD and drop accents (Mn) when lower-casing, space out punctuation.
* ``tokenizers`` (Rust): match the special tokens, split on whitespace, WordPiece (greedy longest-match-first, ``##``
  continuations, words over ``max_input_chars_per_word`` or not coverable -> ``[UNK]``), the ``[CLS]`` / ``[SEP]``
  template and truncation, batching in parallel. Padding into (B, L) arrays is numpy (faster than Rust padding plus
  a list-of-lists conversion).

Normalisation stays in Python because the Rust ``BertNormalizer`` / ``BertPreTokenizer`` (what transformers'
Rust-backed ``BertTokenizerFast`` / 5.x ``BertTokenizer`` use) disagree with the Python class on about 830k code
points: their Unicode tables are older than Python's (code points unassigned for Python are kept instead of dropped;
marks and punctuation added since are not stripped / split; U+166D is split as punctuation), their CJK range starts
at U+2B920 instead of U+2B820, there is no NFC step, and lone surrogates are refused.

Checked (tests/test_tokenizer_parity.py, and once against transformers 4.57.6 / 5.23.0 on the same 50,000 generated
captions): the ids equal the former pure-Python implementation (kept in tests/reference_wordpiece.py) and
transformers 4.57.6's ``BertTokenizer``, with these differences:

* cased, a word that becomes a special-token string once cleaned (``[SE\\x00P]``) is that special token, as in HF
  (``never_split``); the former implementation split it;
* a special-token string absent from the vocab (a vocab without ``[MASK]``) gets the ``[UNK]`` id, as before; HF adds
  it to the vocab with a new id. :meth:`BertWordPieceTokenizer.tokenize` shows it as ``[UNK]``;
* transformers 5.x's ``BertTokenizerLegacy`` lower-cases per word (a final capital sigma becomes ``ς``, we and 4.x
  give ``σ``) and checks ``never_split`` before lower-casing (lower-cased, ``[SE\\x00P]`` is ``[SEP]`` there);
  transformers' Rust-backed classes differ as listed above (on 57 % of those captions lower-cased, 65 % cased: they
  seek out such characters)."""
from __future__ import annotations

import itertools
import os
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing
from ..errors import TokenizerNotFoundError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
REQUIRED_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP)
VOCAB_FILE = "vocab.txt"
Flavor = Literal["hf", "umt"]


# ------------------------------------------------------------------------------------------ character classes (HF)
def _is_whitespace(ch: str) -> bool:
    return ch in (" ", "\t", "\n", "\r") or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in ("\t", "\n", "\r") and unicodedata.category(ch).startswith("C")


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


def _lower(text: str) -> str:
    # HF lower-cases non-special text one character at a time; str.lower differs only by the final-sigma rule.
    if "\u03a3" in text:
        return "".join(ch.lower() for ch in text)
    return text.lower()


def _clean_char(ch: str, chinese: bool) -> str | None:
    """Drop NUL, U+FFFD and control characters (C* but tab / newline / CR), whitespace -> space, CJK ideograph ->
    `` X `` (when ``chinese``)."""
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or _is_control(ch):
        return None
    if _is_whitespace(ch) or ch.isspace():  # str.split also splits on U+2028 / U+2029
        return " "
    if chinese and _is_chinese_char(cp):
        return f" {ch} "
    return ch


def _split_char(ch: str, strip_marks: bool) -> str | None:
    """Punctuation -> `` X `` (isolated, as HF splits it); with ``strip_marks``, drop Mn (accents after NFD)."""
    if strip_marks and unicodedata.category(ch) == "Mn":
        return None
    if _is_punctuation(ch):
        return f" {ch} "
    return ch


class _CharTable(dict):
    """A ``str.translate`` table filled on first sight of each code point by ``rule(ch, flag)``; it keeps unchanged
    code points too (a miss costs ``str.translate`` a KeyError per character)."""

    def __init__(self, rule: Callable[[str, bool], str | None], flag: bool) -> None:
        super().__init__()
        self.rule, self.flag = rule, flag

    def __missing__(self, cp: int) -> str | int | None:
        ch = chr(cp)
        out = self.rule(ch, self.flag)
        self[cp] = value = cp if out == ch else out
        return value


_CLEAN = {flag: _CharTable(_clean_char, flag) for flag in (False, True)}
_SPLIT = {flag: _CharTable(_split_char, flag) for flag in (False, True)}


def _ascii_char(ch: str) -> str | None:
    cleaned = _clean_char(ch, False)
    return cleaned if cleaned != ch else _split_char(ch, False)


# ASCII texts in one pass: control characters dropped, tab / newline / CR -> space, punctuation isolated
_ASCII_MAP = {cp: cp if out == chr(cp) else out for cp in range(128) for out in [_ascii_char(chr(cp))]}
_ASCII_CLEAN = {cp: cp if out == chr(cp) else out for cp in range(128) for out in [_clean_char(chr(cp), False)]}


class _Normalizer:
    """HF ``BasicTokenizer`` up to its word list, as one string: ``" ".join(words) == " ".join(out.split())``.

    Every punctuation character comes out with spaces around it, so no special-token string survives in the output
    (its ``[`` is isolated), except with ``never_split`` a whole word equal to one once cleaned (e.g.
    ``[SE\\x00P]``): HF keeps it whole, which only happens without lower-casing (HF lower-cases before cleaning).
    """

    def __init__(self, do_lower_case: bool = True, tokenize_chinese_chars: bool = True, nfc: bool = True,
                 never_split: bool = True) -> None:
        self.lower = do_lower_case
        self.never_split = never_split and not do_lower_case
        self.nfc = nfc and not do_lower_case  # NFC then NFD = NFD: only the cased path needs it
        self.clean = _CLEAN[tokenize_chinese_chars]
        self.split = _SPLIT[do_lower_case]

    def __call__(self, text: str) -> str:
        if self.lower:
            text = _lower(text)
        if text.isascii():
            if not self.never_split or "[" not in text:
                return text.translate(_ASCII_MAP)
            text = text.translate(_ASCII_CLEAN)
        else:
            text = text.translate(self.clean)
            if not text.isascii():
                if self.lower:
                    text = unicodedata.normalize("NFD", text)
                elif self.nfc:
                    text = unicodedata.normalize("NFC", text)
        if self.never_split and "[" in text:  # a word equal to a special-token string stays whole
            return " ".join(w if w in SPECIAL_TOKENS else w.translate(self.split) for w in text.split())
        return text.translate(self.split)

    def words(self, text: str) -> list[str]:
        """Whitespace-separated words after punctuation splitting (no special-token handling)."""
        return self(text).split()


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
    normalize = _Normalizer(lower_case, never_split=False)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalize.words(text))
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


def _hub_vocab_file(name: str, cache_dir: str | os.PathLike | None, revision: str | None,
                    local_files_only: bool) -> str:
    """``vocab.txt`` of Hub repo ``name``: from the local HF cache, else downloaded; fails at once when offline."""
    hint = f"pass a local directory containing {VOCAB_FILE} (or the file itself)"
    try:
        import huggingface_hub as hub
        from huggingface_hub import constants
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with tokenizers
        raise TokenizerNotFoundError(f"tokenizer {name!r} is not a local path and huggingface_hub is not installed; "
                                     f"{hint}") from err
    try:
        return hub.hf_hub_download(repo_id=name, filename=VOCAB_FILE, cache_dir=cache_dir, revision=revision,
                                   local_files_only=True)
    except Exception:  # not cached (or a malformed name): ask the Hub below
        pass
    if local_files_only or constants.HF_HUB_OFFLINE:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise TokenizerNotFoundError(f"tokenizer {name!r}: not a local path, not in the Hugging Face cache, and {why}; "
                                     f"{hint}")
    try:  # one HEAD request, not retried (huggingface_hub >= 1.0): offline fails at once, not after ~1 min of backoff
        url = hub.hf_hub_url(repo_id=name, filename=VOCAB_FILE, revision=revision)
        hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return hub.hf_hub_download(repo_id=name, filename=VOCAB_FILE, cache_dir=cache_dir, revision=revision)
    except Exception as err:  # offline, unknown repo, no vocab.txt in it...
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
        raise TokenizerNotFoundError(f"tokenizer {name!r}: not a local path, not in the Hugging Face cache, and "
                                     f"{VOCAB_FILE} could not be downloaded from the Hub ({reason}); {hint}") from err


# -------------------------------------------------------------------------------------------------------- tokenizer
class BertWordPieceTokenizer:
    """HF-compatible ``BertTokenizer`` (uncased by default) on HF ``tokenizers``, without transformers.

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
        self.special_tokens = list(SPECIAL_TOKENS)  # split out of texts even if absent from the vocab (-> [UNK])
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in self.special_tokens) + ")")
        self._normalize = _Normalizer(do_lower_case, tokenize_chinese_chars, nfc=flavor == "hf")
        self._rust = self._build_rust()
        self._lock = threading.Lock()

    def _build_rust(self) -> Tokenizer:
        rust = Tokenizer(WordPiece(self.vocab, unk_token=UNK, max_input_chars_per_word=self.max_input_chars_per_word))
        rust.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the normalizer already isolated punctuation
        rust.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                 for t in self.special_tokens if t in self.vocab])
        template = f"{CLS} $A {SEP}" if self.append_sep else f"{CLS} $A"
        rust.post_processor = TemplateProcessing(single=template, pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
                                                 special_tokens=[(CLS, self.vocab[CLS]), (SEP, self.vocab[SEP])])
        return rust

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        (e.g. ``bert-base-uncased``): its ``vocab.txt`` from the local HF cache, else downloaded.

        Raises:
            TokenizerNotFoundError (a FileNotFoundError): no such path, and the vocab is neither cached nor
                downloadable; without a network this fails at once (one request, no retries).
        """
        path = Path(os.path.expanduser(str(name_or_path)))
        if path.is_dir():
            return cls.from_directory(path, **kwargs)
        if path.is_file():
            return cls.from_vocab_file(path, **kwargs)
        name = str(name_or_path)
        if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
            raise TokenizerNotFoundError(f"tokenizer path not found: {path} (a directory containing {VOCAB_FILE} "
                                         f"or the {VOCAB_FILE} file itself)")
        return cls.from_vocab_file(_hub_vocab_file(name, cache_dir, revision, local_files_only), **kwargs)

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
    def _prepare(self, text: str) -> str:
        """``text`` as the Rust side takes it: special-token strings kept (absent from the vocab: ``[UNK]``), the
        rest normalised with punctuation isolated."""
        if "[" not in text:
            return self._normalize(text)
        parts = self._special_re.split(text)  # odd positions: special-token strings
        return " ".join((p if p in self.vocab else UNK) if i % 2 else self._normalize(p)
                        for i, p in enumerate(parts) if p)

    def _encode(self, texts: list[str], add_special_tokens: bool = True, truncate_to: int | None = None,
                tokens: bool = False) -> list:
        """Rust encodings of prepared texts, truncated to ``truncate_to`` ids (special tokens included) if given;
        ``tokens``: fill ``Encoding.tokens`` (``encode_batch_fast`` leaves them empty)."""
        with self._lock:  # truncation is a setting of the shared Rust tokenizer
            if truncate_to is None:
                self._rust.no_truncation()
            else:
                self._rust.enable_truncation(truncate_to)
            encode = self._rust.encode_batch if tokens else self._rust.encode_batch_fast
            return encode(texts, add_special_tokens=add_special_tokens)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without ``[CLS]`` / ``[SEP]``."""
        return self._encode([self._prepare(text)], add_special_tokens=False, tokens=True)[0].tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text (``[CLS] ... [SEP]``, flavor ``"umt"``: ``[CLS] ...``), not truncated."""
        return self._encode([self._prepare(text)], add_special_tokens=add_special_tokens)[0].ids

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
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        if not texts:
            raise ValueError("texts is empty")
        encodings = self._encode([self._prepare(t) for t in texts], truncate_to=max_length if truncation else None)
        rows = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        if padding == "max_length":
            if lengths.max() > max_length:  # only without truncation
                i = int(np.argmax(lengths > max_length))
                raise ValueError(f"texts[{i}] has {lengths[i]} tokens > max_length = {max_length} and truncation "
                                 "is off: rows cannot be stacked")
            width = max_length
        else:
            width = int(lengths.max())
        mask = np.arange(width) < lengths[:, None]  # (B, L)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        input_ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
