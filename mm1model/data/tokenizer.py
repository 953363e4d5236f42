"""The corpus tokenizer: a byte-level BPE trained offline at prepare time, saved with the corpus.

Byte-level means every string encodes (no unknown token). The special tokens of
:mod:`mm1model.tokens` are given to the trainer first, so they get ids 0..4 and the model and the
packer can use the constants without loading this file. The vocabulary is exactly
``CORPUS_VOCAB_SIZE`` (4096) on the real corpus; the synthetic fallback's templated text has
fewer distinct merges, so its vocabulary can be smaller (never larger).

A run from a pretrained LM (``TrainConfig.init.lm``) tokenizes with that checkpoint's
``tokenizer.json`` instead (``DataConfig.tokenizer``): its special ids are
:func:`mm1model.tokens.checkpoint_special_ids` (image tokens appended after its embedding rows,
end of document its eos), carried by the :class:`CorpusTokenizer` to the packer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Encoding, Tokenizer, decoders, models, pre_tokenizers, trainers

from mm1model.config import ConfigError
from mm1model.pretrained import read_llama
from mm1model.tokens import BUNDLED_SPECIAL_IDS, CORPUS_VOCAB_SIZE, SPECIAL_TOKENS, SpecialIds

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


@dataclass(frozen=True)
class CorpusTokenizer:
    """A tokenizer and the special ids the packer writes with it (``special``)."""

    tokenizer: Tokenizer
    special: SpecialIds

    def encode(self, text: str) -> Encoding:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def get_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def checkpoint_tokenizer(checkpoint: str | Path) -> CorpusTokenizer:
    """The ``tokenizer.json`` of a pretrained LM directory with that checkpoint's special ids;
    ConfigError (one line) when there is none, when it has more tokens than the checkpoint has
    embedding rows, or when the checkpoint's eos id (or its bos id, if set) is not one of its
    tokens: either way a tokenizer of another model."""
    pretrained = read_llama(checkpoint)
    path = Path(checkpoint) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"init.lm {checkpoint} has no {TOKENIZER_FILE} (the checkpoint's tokenizer, read with "
                          "HF tokenizers)")
    tokenizer = Tokenizer.from_file(str(path))
    tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    if tokens > pretrained.embedding_rows:
        raise ConfigError(f"init.lm {checkpoint}: {TOKENIZER_FILE} has {tokens} tokens, more than the checkpoint's "
                          f"{pretrained.embedding_rows} embedding rows: the tokenizer is not this model's")
    ids = {"eos_token_id": pretrained.eos_id, "bos_token_id": pretrained.bos_id}
    missing = [f"{name} {value}" for name, value in ids.items()
               if value is not None and tokenizer.id_to_token(value) is None]
    if missing:
        named = ", ".join(f"{name} {value} -> {tokenizer.id_to_token(value)!r}" for name, value in ids.items()
                          if value is not None)
        raise ConfigError(f"init.lm {checkpoint}: config.json's {' and '.join(missing)} "
                          f"{'is not a token' if len(missing) == 1 else 'are not tokens'} of {TOKENIZER_FILE} "
                          f"({tokens} tokens; {named}): the tokenizer is not this model's")
    return CorpusTokenizer(tokenizer, pretrained.special)


def load_tokenizer(corpus_dir: str | Path, checkpoint: str | Path | None = None) -> CorpusTokenizer:
    """The tokenizer saved in a prepared corpus directory, with the bundled special ids; or, with
    ``checkpoint`` (a pretrained LM directory), that checkpoint's (:func:`checkpoint_tokenizer`)."""
    if checkpoint is not None:
        return checkpoint_tokenizer(checkpoint)
    path = Path(corpus_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"no {TOKENIZER_FILE} in {corpus_dir}: run `scaling data prepare` first")
    return CorpusTokenizer(Tokenizer.from_file(str(path)), BUNDLED_SPECIAL_IDS)
