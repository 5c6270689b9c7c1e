"""Caption cleaning (official ``pre_text``) and a BERT WordPiece tokenizer on HF ``tokenizers``."""
from vidtldr_pl.text.cleaning import answer_texts, clean_caption, join_paragraph, pre_text
from vidtldr_pl.text.tokenizer import (
    SPECIAL_TOKENS,
    BertWordPieceTokenizer,
    TokenizerNotFoundError,
    build_vocab,
    load_vocab,
)

__all__ = [
    "answer_texts",
    "SPECIAL_TOKENS",
    "BertWordPieceTokenizer",
    "TokenizerNotFoundError",
    "build_vocab",
    "clean_caption",
    "join_paragraph",
    "load_vocab",
    "pre_text",
]
