"""The embedded tiny model's tokenizer: a word-level vocabulary built from the synthetic task, no training.

Pieces (in the order the splitting regex tries them):

- the four tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as single tokens;
- a word with an optional leading space (``" apples"``, ``"Ann"``), taken from the task's closed vocabulary;
- one digit with an optional leading space (``" 3"``, ``"8"``): numbers are spelled digit by digit, so that the
  model sees the same tokens for 38 and 83 and arithmetic is learnable by a tiny model;
- one other character with an optional leading space (``" +"``, ``","``), and single whitespace characters.

Decoding concatenates the pieces (``decoders.Fuse``), so ``decode(encode(text)) == text`` for every string the task
produces (spaces are part of the pieces). Specials: ``<eos>`` (ends every completion), ``<pad>``, ``<unk>``
and ``<bos>``, which is defined but never added: encoding is the same with and without ``add_special_tokens``, so
callers that tokenize prompts either way (rollouts use ``add_special_tokens=False``) feed the model what it was
trained on. Building is deterministic: the vocabulary is sorted.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from softgate.tasks.synthetic import vocabulary_corpus


BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0..3 in this order
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
SPLIT_PATTERN = r"</?think>|</?answer>| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")


def build_vocab(extra_texts: list[str] | None = None) -> dict[str, int]:
    """Specials, tags, every printable ASCII character with and without a leading space, and every word of the
    task's corpus (plus ``extra_texts``) with and without a leading space, sorted, numbered from 0."""
    pre = _pre_tokenizer()
    pieces: set[str] = set(TAGS)
    for ch in string.printable:
        if ch.isspace():
            pieces.add(ch)
        else:
            pieces.update({ch, " " + ch})
    for text in [*vocabulary_corpus(), *(extra_texts or [])]:
        for piece, _ in pre.pre_tokenize_str(text):
            word = piece.lstrip(" ")
            # A word may start a sentence or follow a space wherever the templates put it: keep both forms.
            pieces.update({word, " " + word} if word.isalpha() else {piece})
    ordered = [*SPECIALS, *sorted(pieces - set(SPECIALS))]
    return {piece: i for i, piece in enumerate(ordered)}


def build_tokenizer(extra_texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer, wrapped for transformers (``save_pretrained`` / ``AutoTokenizer.from_pretrained`` work)."""
    vocab = build_vocab(extra_texts)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        # Left padding is what batched generation needs; training code that pads on the right says so itself.
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=256,
    )
    return fast


def save_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Build and save the tokenizer files into ``out_dir``; returns the tokenizer."""
    tok = build_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
