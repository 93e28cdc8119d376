"""The combat task's tokenizer: BPE over whole words, so each value in a prompt is one token."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lego_embed.model.tokenizer import Tokenizer

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def train_npc_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Trains a BPE tokenizer (Metaspace words, BOS prepended) on `texts`."""
    backend = BackendTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    backend.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    backend.train_from_iterator(texts, trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return Tokenizer(backend, {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"})
