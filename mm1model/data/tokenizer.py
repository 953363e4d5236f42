"""The corpus tokenizer: a byte-level BPE trained offline at prepare time, saved with the corpus.

Byte-level means every string encodes (no unknown token). The special tokens of
:mod:`mm1model.tokens` are given to the trainer first, so they get ids 0..4 and the model and the
packer can use the constants without loading this file. The vocabulary is exactly
``CORPUS_VOCAB_SIZE`` (4096) on the real corpus; the synthetic fallback's templated text has
fewer distinct merges, so its vocabulary can be smaller (never larger).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mm1model.config import ConfigError
from mm1model.tokens import CORPUS_VOCAB_SIZE, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int = CORPUS_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE with ``SPECIAL_TOKENS`` at ids 0..len-1."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, "special tokens must come first"
    return tokenizer


def load_tokenizer(corpus_dir: str | Path) -> Tokenizer:
    """The tokenizer saved in a prepared corpus directory."""
    path = Path(corpus_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"no {TOKENIZER_FILE} in {corpus_dir}: run `scaling data prepare` first")
    return Tokenizer.from_file(str(path))
