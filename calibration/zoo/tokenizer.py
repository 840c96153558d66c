"""A word-level tokenizer built locally with `tokenizers`, so no pipeline ever needs the hub.

The toy prompts use a closed vocabulary ("a red circle moving left on a blue background"), so a
word-level model is exact and tiny. Special tokens follow T5's conventions (pad = 0, eos = 1,
unk = 2) because the T5/UMT5 encoders and the pipelines' padding logic assume them.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["BASE_VOCABULARY", "build_tokenizer"]

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

#: Words every toy prompt can use; unknown words map to <unk> rather than failing.
BASE_VOCABULARY = [
    "a", "an", "the", "on", "moving", "background", "with", "and", "of", "in",
    "circle", "square", "triangle", "ring", "cross", "diamond",
    "left", "right", "up", "down", "still",
    "red", "green", "blue", "yellow", "white", "black", "purple", "orange", "cyan", "magenta", "gray",
]


def build_tokenizer(extra_words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Return a fast tokenizer over `BASE_VOCABULARY` (+ `extra_words`) that appends `</s>`."""
    words = list(dict.fromkeys(BASE_VOCABULARY + list(extra_words or [])))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
