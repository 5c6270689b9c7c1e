"""Caption cleaning (official ``pre_text``) and the BERT WordPiece tokenizer (HF ``tokenizers`` underneath)."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from vidtldr_pl.text import (
    SPECIAL_TOKENS,
    BertWordPieceTokenizer,
    TokenizerNotFoundError,
    build_vocab,
    clean_caption,
    join_paragraph,
    load_vocab,
    pre_text,
)


# ----------------------------------------------------------------------------------------------- official pre_text
def official_pre_text(text, max_l=None):
    """Transcription of UMT ``dataset/utils.py::pre_text``."""
    text = re.sub(r"([,.'!?\"()*#:;~])", "", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text)
    text = text.rstrip("\n").strip(" ")
    if max_l:  # truncate
        words = text.split(" ")
        if len(words) > max_l:
            text = " ".join(words[:max_l])
    return text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man is Cooking.", "a man is cooking"),
        ("<Person> opens a door", "person opens a door"),  # lower-cased first, so <Person> matches
        ("<person>, waves!", "person waves"),
        ("<per-son> waves", "<per son> waves"),  # '-' -> ' ' before the <person> replacement
        ("don't (really) do #this: ok; ~yes?", "dont really do this ok yes"),
        ("a/b-c", "a b c"),
        ('he said "hi"', "he said hi"),
        ("a\tb", "a\tb"),  # a single tab is not collapsed
        ("a \t b", "a b"),
        ("  hello   world \n", "hello world"),
        ("hi\n", "hi"),
        ("x - y", "x y"),  # "x   y" collapsed
        ("[brackets] & {braces} stay", "[brackets] & {braces} stay"),
        ("", ""),
    ],
)
def test_clean_caption_examples(raw, expected):
    assert clean_caption(raw) == expected
    assert official_pre_text(raw) == expected


def test_clean_caption_max_words():
    assert clean_caption("One two, three four five", max_words=3) == "one two three"
    assert clean_caption("one two", max_words=5) == "one two"
    assert clean_caption("one two three", max_words=0) == "one two three"  # 0 = no limit, as official
    assert clean_caption("one two three", max_words=None) == "one two three"
    assert pre_text is clean_caption


def test_clean_caption_fuzz_vs_official():
    rng = random.Random(0)
    alphabet = list("abcXYZ ,.'!?\"()*#:;~-/<>\t\n") + ["<person>", "<PERSON>", "  ", "\n\n", "é", "Σ"]
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        k = rng.choice([None, 0, 1, 3, 8])
        assert clean_caption(s, k) == official_pre_text(s, k), repr(s)


def test_join_paragraph():
    assert join_paragraph(["A man walks.", "He sits."]) == "A man walks. He sits."
    assert clean_caption(join_paragraph(["A man walks.", "He sits."])) == "a man walks he sits"
    assert join_paragraph("already joined") == "already joined"
    assert join_paragraph([]) == ""


# ------------------------------------------------------------------------------------------------------- tokenizer
BASE_VOCAB = list(SPECIAL_TOKENS) + [
    "un", "una", "##aff", "##able", "##ffable", "aff", "hello", "world", "a", "man", "is", "running", "run", "##ning",
    ",", ".", "!", "?", "'", "$", "^", "`", "«", "»", "cafe", "naive", "我", "爱", "you", "οδοσ", "x", "##x",
]


@pytest.fixture()
def tok() -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(BASE_VOCAB)


def test_special_token_ids(tok):
    ids = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    assert len(tok) == tok.vocab_size == len(BASE_VOCAB)


def test_wordpiece_splits(tok):
    # greedy longest-match-first: "una" beats "un", then "##ffable" covers the rest
    assert tok.tokenize("unaffable") == ["una", "##ffable"]
    t2 = BertWordPieceTokenizer([t for t in BASE_VOCAB if t not in ("una", "##ffable")])
    assert t2.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("running") == ["running"]
    assert tok.tokenize("runx") == ["run", "##x"]
    # a word that cannot be fully covered is one [UNK], not partial pieces
    assert tok.tokenize("unzzz hello") == ["[UNK]", "hello"]
    assert tok.tokenize("zebra") == ["[UNK]"]


def test_lowercase_accents_and_punctuation(tok):
    assert tok.tokenize("Hello WORLD") == ["hello", "world"]
    assert tok.tokenize("Café naïve") == ["cafe", "naive"]
    assert tok.tokenize("Cafe\u0301") == ["cafe"]  # decomposed accent, stripped too
    assert tok.tokenize("hello,world!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("man's") == ["man", "'", "[UNK]"]
    # ASCII symbols 33-47, 58-64, 91-96, 123-126 are punctuation even when Unicode says symbol ($ Sc, ^ Sk, ` Sk)
    assert tok.tokenize("a$a^a`a") == ["a", "$", "a", "^", "a", "`", "a"]
    assert tok.tokenize("«hello»") == ["«", "hello", "»"]  # Unicode Pi / Pf
    assert tok.tokenize("a€a") == ["[UNK]"]  # U+20AC is Sc, not punctuation: one word
    assert tok.tokenize("ΟΔΟΣ") == ["οδοσ"]  # lower-cased char by char: no final sigma


def test_cjk_whitespace_and_control(tok):
    assert tok.tokenize("我爱you") == ["我", "爱", "you"]
    assert tok.tokenize("hello\tworld\nman\u00a0is\u3000a") == ["hello", "world", "man", "is", "a"]
    assert tok.tokenize("hel\x00lo wor\u200bld \ufffd") == ["hello", "world"]  # NUL, Cf, U+FFFD dropped
    assert tok.tokenize("   ") == [] and tok.tokenize("") == []


def test_special_tokens_in_text(tok):
    assert tok.tokenize("hello[SEP]world [MASK]") == ["hello", "[SEP]", "world", "[MASK]"]
    assert tok.tokenize("[sep]") == ["[UNK]", "[UNK]", "[UNK]"]  # lower case: ordinary text, '[' ']' punctuation
    assert tok.encode("a [SEP] a") == [2, tok.vocab["a"], 3, tok.vocab["a"], 3]


def test_long_word_is_unk(tok):
    assert tok.tokenize("x" * 100) == ["x"] + ["##x"] * 99
    assert tok.tokenize("x" * 101) == ["[UNK]"]
    t = BertWordPieceTokenizer(BASE_VOCAB, max_input_chars_per_word=5)
    assert t.tokenize("xxxxxx x") == ["[UNK]", "x"]


def test_call_max_length_padding_and_mask(tok):
    out = tok(["a man is running", "hello"], max_length=8)
    v = tok.vocab
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    assert out["input_ids"].tolist() == [
        [2, v["a"], v["man"], v["is"], v["running"], 3, 0, 0],
        [2, v["hello"], 3, 0, 0, 0, 0, 0],
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]


def test_call_truncation_keeps_sep(tok):
    out = tok(["a man is running hello world"], max_length=5)
    v = tok.vocab
    assert out["input_ids"].tolist() == [[2, v["a"], v["man"], v["is"], 3]]
    assert out["attention_mask"].tolist() == [[1] * 5]
    # word pieces are cut, not words: the row may end in the middle of a word
    out = tok(["unaffable"], max_length=3)
    assert out["input_ids"].tolist() == [[2, v["una"], 3]]
    out = tok(["a man"], max_length=2)
    assert out["input_ids"].tolist() == [[2, 3]]


def test_call_longest_and_errors(tok):
    out = tok(["a man is", "hello"], padding="longest")
    assert out["input_ids"].shape == (2, 5)
    assert out["attention_mask"].sum(1).tolist() == [5, 3]
    out = tok(["a man is running"], max_length=4, padding="longest")  # truncation to max_length still applies
    assert out["input_ids"].shape == (1, 4)
    assert tok("hello", max_length=4)["input_ids"].shape == (1, 4)  # a single string is a batch of one
    with pytest.raises(ValueError, match="truncation is off"):
        tok(["a man is running"], max_length=4, truncation=False)
    with pytest.raises(ValueError, match="padding"):
        tok(["a"], max_length=4, padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length = 1"):
        tok(["a"], max_length=1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["a", None], max_length=4)


def test_flavor_umt_has_no_sep(tok):
    umt = BertWordPieceTokenizer(BASE_VOCAB, flavor="umt")
    v = umt.vocab
    out = umt(["a man is running", "hello"], max_length=6)
    assert out["input_ids"].tolist() == [
        [2, v["a"], v["man"], v["is"], v["running"], 0],
        [2, v["hello"], 0, 0, 0, 0],
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]
    # truncation keeps max_length - 1 word pieces after [CLS] (HF flavor keeps max_length - 2 and a [SEP])
    assert umt(["a man is running hello"], max_length=4)["input_ids"].tolist() == [[2, v["a"], v["man"], v["is"]]]
    assert tok(["a man is running hello"], max_length=4)["input_ids"].tolist() == [[2, v["a"], v["man"], 3]]
    assert umt(["a man"], max_length=1)["input_ids"].tolist() == [[2]]
    assert umt.encode("hello") == [2, v["hello"]] and tok.encode("hello") == [2, v["hello"], 3]
    assert umt(["a", "a man"], padding="longest")["input_ids"].shape == (2, 3)
    assert umt.tokenize("Café, naïve!") == tok.tokenize("Café, naïve!")
    with pytest.raises(ValueError, match="flavor"):
        BertWordPieceTokenizer(BASE_VOCAB, flavor="albef")


def test_nfc_only_matters_when_cased():
    vocab = list(SPECIAL_TOKENS) + ["é", "e", "##́"]
    hf = BertWordPieceTokenizer(vocab, do_lower_case=False)
    umt = BertWordPieceTokenizer(vocab, do_lower_case=False, flavor="umt")
    assert hf.tokenize("e\u0301") == ["é"]  # NFC composes e + combining acute
    assert umt.tokenize("e\u0301") == ["e", "##\u0301"]
    lower_hf, lower_umt = BertWordPieceTokenizer(vocab), BertWordPieceTokenizer(vocab, flavor="umt")
    assert lower_hf.tokenize("E\u0301 é") == lower_umt.tokenize("E\u0301 é") == ["e", "e"]  # accents stripped


def test_cache_consistency(tok):
    texts = ["Hello, world!", "hello world", "HELLO café"] * 3
    first = [tok.tokenize(t) for t in texts]
    assert [tok.tokenize(t) for t in texts] == first
    assert [tok.encode(t, add_special_tokens=False) for t in texts] == [tok.convert_tokens_to_ids(f) for f in first]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.decode(tok.encode("unaffable")) == "unaffable"


def test_pickle_roundtrip(tok):
    """DataLoader workers started by spawn receive the tokenizer pickled."""
    import pickle

    t2 = pickle.loads(pickle.dumps(tok))
    texts = ["a man is running", "Café, naïve! [SEP] 我爱you"]
    assert torch.equal(t2(texts, max_length=8)["input_ids"], tok(texts, max_length=8)["input_ids"])


# --------------------------------------------------------------------------------------------------- vocab / files
def test_build_vocab():
    vocab = build_vocab(["A man runs.", "a MAN walks", "a dog"], min_freq=1)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab[5:] == ["a", "man", ".", "dog", "runs", "walks"]  # by count, then alphabetical
    assert build_vocab(["a man", "a dog"], min_freq=2)[5:] == ["a"]
    with_chars = build_vocab(["ab"], char_pieces=True)
    assert {"a", "b", "##a", "##b"} <= set(with_chars)
    t = BertWordPieceTokenizer(with_chars)
    assert t.tokenize("ba abba") == ["b", "##a", "ab", "##b", "##a"]
    t2 = BertWordPieceTokenizer.from_texts(["A man runs."])
    assert t2.tokenize("a man runs.") == ["a", "man", "runs", "."]
    with pytest.raises(ValueError):
        build_vocab(["a"], min_freq=0)


def test_save_and_load_roundtrip(tmp_path, tok):
    path = tok.save_vocab(tmp_path)
    assert path == tmp_path / "vocab.txt"
    assert path.read_text(encoding="utf-8").splitlines() == BASE_VOCAB
    for t2 in (BertWordPieceTokenizer.from_directory(tmp_path), BertWordPieceTokenizer.from_vocab_file(path),
               BertWordPieceTokenizer.from_pretrained(tmp_path), BertWordPieceTokenizer.from_pretrained(str(path))):
        assert t2.vocab == tok.vocab
        assert t2(["unaffable hello"], max_length=6)["input_ids"].tolist() == \
            tok(["unaffable hello"], max_length=6)["input_ids"].tolist()


def test_load_vocab_duplicates_later_wins(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nhello\n", encoding="utf-8")
    assert load_vocab(p)["hello"] == 5


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "vocab.txt"))):
        BertWordPieceTokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BertWordPieceTokenizer.from_vocab_file(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        BertWordPieceTokenizer.from_pretrained(str(tmp_path / "does_not_exist"))
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        BertWordPieceTokenizer.from_pretrained(tmp_path)  # a directory without vocab.txt
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        BertWordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "hello"])


def _fake_bert_cache(cache: Path, vocab: list[str], repo: str = "bert-base-uncased") -> None:
    """The Hugging Face cache layout holding ``repo``'s vocab.txt (models--repo/refs/main, snapshots/<commit>/)."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a Hub endpoint that refuses connections (whatever this machine's network)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def test_from_pretrained_offline_fails_at_once_with_the_hint(no_network, monkeypatch):
    import huggingface_hub

    downloads = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        downloads.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(TokenizerNotFoundError) as info:
        BertWordPieceTokenizer.from_pretrained("bert-base-uncased")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # the CLI turns it into one line and exit code 2
    assert "\n" not in message and "'bert-base-uncased'" in message and "not in the Hugging Face cache" in message
    assert message.endswith("pass a local directory containing vocab.txt (or the file itself)")
    assert downloads == [True]  # the cache was read; the retrying download was never started


def test_from_pretrained_hub_offline_env_and_local_files_only(no_network, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(TokenizerNotFoundError, match="local_files_only=True; pass a local directory"):
        BertWordPieceTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokenizerNotFoundError, match="HF_HUB_OFFLINE is set; pass a local directory"):
        BertWordPieceTokenizer.from_pretrained("google-bert/bert-base-uncased")


def test_from_pretrained_hub_reads_the_cache_offline(no_network, tok):
    _fake_bert_cache(no_network, BASE_VOCAB)
    t = BertWordPieceTokenizer.from_pretrained("bert-base-uncased", flavor="umt")
    assert t.vocab == tok.vocab and t.flavor == "umt"


def test_from_pretrained_hub_downloads_when_online(monkeypatch, tmp_path, tok):
    import huggingface_hub

    path = tok.save_vocab(tmp_path)
    calls = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append(("download", repo_id, filename, local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: calls.append(("head", url)))
    t = BertWordPieceTokenizer.from_pretrained("google-bert/bert-base-uncased")
    assert t.vocab == tok.vocab
    assert [c[0] for c in calls] == ["download", "head", "download"] and calls[0][3] and not calls[2][3]
    assert calls[1][1].endswith("google-bert/bert-base-uncased/resolve/main/vocab.txt")


def test_from_pretrained_unknown_repo_is_one_line(monkeypatch):
    import huggingface_hub

    def missing(url, **kwargs):
        raise huggingface_hub.errors.EntryNotFoundError("404 Client Error.\n\nEntry Not Found for url: " + url)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", missing)
    with pytest.raises(TokenizerNotFoundError, match=r"\(EntryNotFoundError: 404 Client Error\.\); pass a local"):
        BertWordPieceTokenizer.from_pretrained("nobody/no-such-bert")
