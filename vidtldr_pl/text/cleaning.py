"""Caption cleaning exactly as the official UMT ``pre_text`` (``dataset/utils.py``)."""
from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_MULTI_WS = re.compile(r"\s{2,}")


def clean_caption(text: str, max_words: int | None = None) -> str:
    """Official ``pre_text(text, max_l)``, step by step in the official order.

    1. lower-case, then delete ``, . ' ! ? " ( ) * # : ; ~``;
    2. ``-`` and ``/`` -> space, then ``<person>`` -> ``person`` (``<``/``>`` survive step 1, so ``"<Person>,"``
       becomes ``person`` while ``"<per-son>"`` does not);
    3. every run of >= 2 whitespace characters -> one space (a single tab / newline is kept as is);
    4. ``rstrip("\\n")`` then ``strip(" ")``;
    5. if ``max_words`` is truthy (0 / None = no limit): keep the first ``max_words`` words of ``text.split(" ")``.
    """
    text = _PUNCT.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _MULTI_WS.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    if max_words:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return text


pre_text = clean_caption  # the official name


def join_paragraph(captions: Sequence[str] | str) -> str:
    """Official ``preprocess_para_retrieval_data``: the captions of one video joined with single spaces.

    A plain string is returned unchanged (``" ".join`` would space out its characters).
    """
    if isinstance(captions, str):
        return captions
    return " ".join(captions)


def answer_texts(answers: list[str], eos: str = "[SEP]") -> list[str]:
    """Answer strings as the official UMT-QA code tokenizes them: ``answer + " " + eos``."""
    return [f"{a} {eos}" for a in answers]
