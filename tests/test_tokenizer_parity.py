"""The ``tokenizers``-backed BertWordPieceTokenizer gives the ids of the former pure-Python one (kept, test-only, in
tests/reference_wordpiece.py) on 50,000 generated captions: accents, CJK, punctuation, control characters, special
token strings inside text, very long words, whitespace oddities, unassigned code points; both flavors, truncation
and padding."""
from __future__ import annotations

import functools
import random
import unicodedata

import pytest
import reference_wordpiece as ref  # tests/: the former implementation, test-only
import torch

from vidtldr_pl.text import BertWordPieceTokenizer, build_vocab

N_CAPTIONS = 50_000

ENGLISH = (
    "a man woman person people child kid dog cat car is are was running runs walking talks talking cooking playing "
    "the of in on at with and to for from video shows showing someone something game football soccer music song "
    "guitar piano dancing dance stage news anchor reporter kitchen food recipe cartoon animated character girl boy "
    "red blue green yellow black white small large big little room street road city water beach ocean mountain "
    "unaffable unhappiness re-enter don't it's o'clock 3d 1080p 2x 100 42nd mr. dr. e.g. u.s.a"
).split()
ACCENTED = ["café", "naïve", "Ångström", "résumé", "Crème brûlée", "São Paulo", "Zürich", "Ærøskøbing", "ﬁancé",
            "cafe\u0301", "E\u0301COLE", "İstanbul", "Straße", "ΟΔΟΣ", "ὈΔΥΣΣΕΎΣ", "Ǆemal", "Kelvin\u212a",
            "Å\u212b", "ＦＵＬＬＷＩＤＴＨ", "𝐁𝐨𝐥𝐝", "Ⅻ", "ǅ", "ŉ", "ﬀ", "ẞ", "µ", "Ω\u2126"]
CJK = ("我爱你中国人在看视频一只猫狗跑步唱歌电影" "日本語のテキストです" "한국어 텍스트" "\u3400\u4dbf\U00020000\U0002a6df"
       "\U0002b820\U0002b8ff\U0002b91f\U0002b920\U0002ceaf\uf900\ufaff\U0002f800\U0002fa1f\u2f00\u3007")
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("«»¿¡—–…“”‘’·•§¶†‡※‰′″‹›⁂⁇、。「」『』【】〈〉・！？，．："
                                                        "\u061f\u061d\u166d\u2e55\u2e5d\u09fd\U00010ead\u0387\u037e")
SYMBOLS = list("€£¥₹©®™°±×÷∞≈≠≤≥√∑∫♪♫☺★☆→←↑↓✓✔❤") + ["😀", "🎬", "🥲", "🫨", "👍🏽", "🇺🇸", "👨‍👩‍👧"]
CONTROL = ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x1c", "\x1f", "\x7f", "\x85", "\u200b", "\u200d",
           "\u200e", "\ufeff", "\ufffd", "\ue000", "\U000f0000", "\u0378", "\U000e0001", "\ud800", "\udfff",
           "\u0890", "\u180e", "\u2060", "\U0001fae9", "\U0003ffff"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\u2003", "\u202f", "\u1680",
          "\u0085", "\u000b"]
MARKS = ["\u0301", "\u0308", "\u0327", "\u0332", "\u20dd", "\u0903", "\u094d", "\u07fd", "\u0898", "\u1734"]
SPECIALS = ["[SEP]", "[CLS]", "[PAD]", "[MASK]", "[UNK]", "[sep]", "[SE", "P]", "[[SEP]]", "[SE\x00P]", "[ SEP ]",
            "[Mask]", "x[CLS]y", "[SEP][SEP]"]

_long = random.Random(2)
LONG_WORDS = ["".join(_long.choice("abcdefghij") for _ in range(n))
              for n in [99, 100, 101] * 20 + list(range(30, 300, 9))]


def _random_char(rng: random.Random) -> str:
    while True:
        cp = rng.randrange(0x110000) if rng.random() < 0.3 else rng.randrange(0x3000)
        if not 0xD800 <= cp <= 0xDFFF or rng.random() < 0.05:
            return chr(cp)


def _word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        w = rng.choice(ENGLISH)
    elif r < 0.65:
        w = rng.choice(ACCENTED)
    elif r < 0.72:
        w = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 6)))
    elif r < 0.77:
        w = rng.choice(SYMBOLS)
    elif r < 0.82:
        w = rng.choice(SPECIALS)
    elif r < 0.825:  # very long words, around max_input_chars_per_word (rare: WordPiece is quadratic in them)
        w = rng.choice(LONG_WORDS)
    elif r < 0.92:  # a word with odd characters inside
        base = rng.choice(ENGLISH)
        i = rng.randint(0, len(base))
        odd = rng.choice([rng.choice(CONTROL), rng.choice(MARKS), rng.choice(PUNCT), rng.choice(SYMBOLS),
                          rng.choice(SPACES)])
        w = base[:i] + odd + base[i:]
    else:
        w = "".join(_random_char(rng) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.2:
        w = rng.choice([w.upper(), w.capitalize(), w.swapcase()])
    if rng.random() < 0.15:
        w += rng.choice(PUNCT)
    return w


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions, deterministic in ``seed``: mostly English words with every kind of oddity mixed in."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [_word(rng) for _ in range(rng.randint(0, 30) if i % 50 else rng.randint(80, 200))]
        text = ""
        for w in words:
            text += (rng.choice(SPACES) if rng.random() < 0.15 else " ") + w
        if rng.random() < 0.1:
            text = rng.choice(SPACES) + text + rng.choice(SPACES)
        out.append(text[1:] if rng.random() < 0.5 else text)
    return out


def make_vocab(captions: list[str], lower: bool, drop_mask: bool = False) -> list[str]:
    """A vocab where many words split into pieces, some pieces are missing ([UNK]) and non-ASCII pieces exist."""
    rng = random.Random(1)
    vocab = ref.build_vocab(captions[:3000], min_freq=4, lower_case=lower, char_pieces=True)
    seen = set(vocab)
    basic = ref._BasicTokenizer(lower)
    extra = []
    for text in captions[3000:6000]:
        for w in basic.tokenize(text):
            if len(w) > 2 and rng.random() < 0.3:
                i = rng.randint(1, len(w) - 1)
                extra += [w[:i], "##" + w[i:], "##" + w[rng.randint(1, i):i]]
    for piece in extra:
        if piece not in seen and piece != "##" and rng.random() < 0.7:
            vocab.append(piece)
            seen.add(piece)
    dropped = {"q", "é", "我"}  # characters absent as pieces: words needing them become [UNK]
    vocab = [t for t in vocab if t not in dropped and t.removeprefix("##") not in dropped]
    if drop_mask:
        vocab = [t for t in vocab if t != "[MASK]"]
    return vocab


@functools.cache
def _captions() -> list[str]:
    return make_captions(N_CAPTIONS)


@functools.cache
def _vocab(lower: bool, drop_mask: bool = False) -> list[str]:
    return make_vocab(_captions(), lower=lower, drop_mask=drop_mask)


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return _captions()


@pytest.fixture(scope="module")
def lower_vocab() -> list[str]:
    return _vocab(True)


@pytest.fixture(scope="module")
def reference_pieces(captions, lower_vocab) -> dict[str, list[int]]:
    """Each caption's word-piece ids (no [CLS] / [SEP]) from the reference, computed once for both flavors (they
    differ only by an NFC step, a no-op when lower-casing: checked on a sample in test_ids_equal_reference)."""
    old = ref.BertWordPieceTokenizer(lower_vocab, flavor="hf")
    return {text: old.encode(text, add_special_tokens=False) for text in captions}


def test_captions_cover_the_corners(captions):
    joined = "".join(captions)
    cats = {unicodedata.category(ch) for ch in joined}
    assert {"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Mc", "Zs", "Zl", "Zp", "Lo", "Po", "Ps", "Sc", "So"} <= cats
    assert all(s in joined for s in ("[SEP]", "[CLS]", "[PAD]", "[MASK]", "[UNK]", "\U0002b820", "\u2028", "\x00"))
    assert max(len(w) for c in captions for w in c.split()) > 100
    assert len(set(captions)) > 0.95 * N_CAPTIONS


@pytest.mark.parametrize("flavor", ["hf", "umt"])
def test_ids_equal_reference(captions, lower_vocab, reference_pieces, flavor):
    new = BertWordPieceTokenizer(lower_vocab, flavor=flavor)
    old = ref.BertWordPieceTokenizer(lower_vocab, flavor=flavor)
    encode = old.encode
    assert all(encode(t, add_special_tokens=False) == reference_pieces[t] for t in captions[:2000])
    # the reference's own __call__ (special tokens, truncation, padding) over the memoised pieces
    old.encode = lambda text, add_special_tokens=True: (
        reference_pieces[text] if not add_special_tokens else encode(text, add_special_tokens))
    for part, kwargs in ((captions, {"max_length": 32}),
                         (captions[:10_000], {"padding": "longest", "truncation": False}),
                         (captions[:5_000], {"max_length": 5}),
                         (captions[:5_000], {"max_length": 512, "padding": "longest"})):
        got, want = new(part, **kwargs), old(part, **kwargs)
        for key in ("input_ids", "attention_mask"):
            if not torch.equal(got[key], want[key]):
                same_shape = got[key].shape == want[key].shape
                rows = (got[key] != want[key]).any(1).nonzero()[:, 0].tolist() if same_shape else []
                raise AssertionError(f"{flavor} {kwargs} {key}: shapes {tuple(got[key].shape)} vs "
                                     f"{tuple(want[key].shape)}, first differing captions "
                                     f"{[part[i] for i in rows[:3]]!r}")


def test_build_vocab_equals_reference(captions):
    part = captions[:3000]
    for lower in (True, False):
        assert build_vocab(part, min_freq=2, lower_case=lower, char_pieces=True) == \
            ref.build_vocab(part, min_freq=2, lower_case=lower, char_pieces=True)


@pytest.mark.parametrize("flavor", ["hf", "umt"])
def test_ids_equal_reference_cased_and_without_mask(captions, flavor):
    """Cased (NFC in "hf", never_split) and a vocab without [MASK]; ``tokenize`` on a sample."""
    # "[SE\x00P]" cased: see test_special_token_formed_by_cleaning_is_kept_whole_when_cased
    part = [c for c in captions[:4_000] if "[SE\x00P]" not in c]
    for lower, drop_mask in ((False, False), (True, True)):
        vocab = _vocab(lower, drop_mask)
        new = BertWordPieceTokenizer(vocab, flavor=flavor, do_lower_case=lower, max_input_chars_per_word=50)
        old = ref.BertWordPieceTokenizer(vocab, flavor=flavor, do_lower_case=lower, max_input_chars_per_word=50)
        for kwargs in ({"max_length": 24}, {"padding": "longest", "truncation": False}):
            assert torch.equal(new(part, **kwargs)["input_ids"], old(part, **kwargs)["input_ids"]), (lower, kwargs)
        if not drop_mask:  # tokenize shows an absent special token as [UNK] (its id was [UNK] before too)
            for text in part[:500]:
                assert new.tokenize(text) == old.tokenize(text), repr(text)


def test_special_token_formed_by_cleaning_is_kept_whole_when_cased():
    """HF's BertTokenizer (transformers 4.x, slow) cleans a word before its never_split check: cased, "[SE\x00P]"
    becomes the [SEP] token; lower-cased it was lower-cased first and is split as text. The former implementation
    split it in both cases (the one place where the ids differ from it)."""
    vocab = list(ref.SPECIAL_TOKENS) + ["a", "[", "]", "SEP", "sep", "[M", "##ASK", "##]"]
    v = {t: i for i, t in enumerate(vocab)}
    cased = BertWordPieceTokenizer(vocab, do_lower_case=False)
    assert cased.encode("a [SE\x00P] a") == [v["[CLS]"], v["a"], v["[SEP]"], v["a"], v["[SEP]"]]
    assert cased.encode("a [SE\x00P]a") == [v["[CLS]"], v["a"], v["["], v["SEP"], v["]"], v["a"], v["[SEP]"]]
    former = ref.BertWordPieceTokenizer(vocab, do_lower_case=False)
    assert former.encode("[SE\x00P]") == [v["[CLS]"], v["["], v["SEP"], v["]"], v["[SEP]"]]
    lower = BertWordPieceTokenizer(vocab)
    assert lower.encode("a [SE\x00P] a") == [v["[CLS]"], v["a"], v["["], v["sep"], v["]"], v["a"], v["[SEP]"]]
    # a special token absent from the vocab is then an ordinary word for WordPiece, as in HF
    no_mask = BertWordPieceTokenizer([t for t in vocab if t != "[MASK]"], do_lower_case=False)
    assert no_mask.tokenize("a [MA\u200bSK]") == ["a", "[M", "##ASK", "##]"]


def _code_points() -> list[str]:
    """All of the BMP but the surrogates, every 11th code point of planes 1-2 and every 211th above, and the edges
    of the CJK ranges (HF's and the Rust normaliser's disagree at U+2B820)."""
    cps = [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x32000, 11), *range(0x32000, 0x110000, 211)]
    for lo, hi in ((0x1F300, 0x1FB00), (0x20000, 0x20010), (0x2A6D0, 0x2A740), (0x2B730, 0x2B750),
                   (0x2B810, 0x2B930), (0x2CEA0, 0x2CEC0), (0x2F7F0, 0x2F810), (0x2FA10, 0x2FA30), (0xE0000, 0xE0080)):
        cps += range(lo, hi)
    return [chr(cp) for cp in sorted(set(cps))]


def test_every_code_point_alone_and_in_a_word():
    """Code points alone and between letters: the per-character tables (control, whitespace, CJK, punctuation,
    marks, case), lower-cased and cased, both flavors."""
    chars = _code_points()
    texts = [" ".join(chars[i:i + 64]) + " " + " ".join(f"A{c}b" for c in chars[i:i + 64])
             for i in range(0, len(chars), 64)]
    for lower in (True, False):
        vocab = ref.build_vocab(texts[::40], lower_case=lower, char_pieces=True)
        for flavor in ("hf", "umt"):
            new = BertWordPieceTokenizer(vocab, flavor=flavor, do_lower_case=lower)
            old = ref.BertWordPieceTokenizer(vocab, flavor=flavor, do_lower_case=lower)
            got = new(texts, padding="longest", truncation=False)["input_ids"]
            want = old(texts, padding="longest", truncation=False)["input_ids"]
            assert torch.equal(got, want), (lower, flavor)
