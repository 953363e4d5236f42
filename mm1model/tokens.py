"""Special token ids shared by the tokenizer, the packer and the model.

The bundled tokenizer is trained with these as its first special tokens, so their ids are fixed
and the model can find image placeholders without loading the tokenizer.
"""
PAD_ID = 0  # padding at the end of a packed sequence (no loss, own attention block)
EOD_ID = 1  # end of document
IMAGE_ID = 2  # one placeholder per image token; the connector's outputs replace these in order
IMAGE_START_ID = 3  # precedes an image's placeholders
IMAGE_END_ID = 4  # follows an image's placeholders
SPECIAL_TOKENS = ("<pad>", "<eod>", "<image>", "<img_start>", "<img_end>")

# Vocabulary of the bundled byte-level BPE (specials included). The CPU sizes use it as their
# vocabulary; larger sizes declare their own and leave the extra rows unused on this corpus.
CORPUS_VOCAB_SIZE = 4096

IGNORE_INDEX = -100  # label value for positions that take no loss
