"""A model folder's tokenizer: `tokenizer.json` run by the `tokenizers` library.

Special tokens (BOS, EOS, padding, unknown) are named in `tokenizer_config.json` (or
`special_tokens_map.json`), as strings or as serialised added-token objects; where neither names
one, the ids in `config.json` stand. Whether BOS is prepended is the tokenizer.json's own
post-processor's business, exactly as Hugging Face's fast tokenizers do it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from lego_embed.errors import TokenizerMissingError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
SPECIAL_ROLES = ("bos", "eos", "pad", "unk")


class Tokenizer:
    """Text <-> token ids for one model, with its special token ids (None where the model has
    no such token)."""

    def __init__(
        self,
        backend: BackendTokenizer,
        special_tokens: dict[str, str],
        fallback_ids: dict[str, int | None] | None = None,
    ) -> None:
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        ids: dict[str, int | None] = dict(fallback_ids or {})
        for role, token in special_tokens.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise TokenizerMissingError(
                    f"the {role} token {token!r} is not in the tokenizer's vocabulary; fix "
                    f"{CONFIG_FILE} or save the tokenizer again"
                )
            ids[role] = token_id
        self.bos_token_id = ids.get("bos")
        self.eos_token_id = ids.get("eos")
        self.pad_token_id = ids.get("pad")
        self.unk_token_id = ids.get("unk")

    @classmethod
    def from_folder(
        cls, folder: Path, fallback_ids: dict[str, int | None] | None = None
    ) -> Tokenizer:
        """Loads `folder/tokenizer.json` and its special tokens (TokenizerMissingError when
        the file is absent or unreadable)."""
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            other = [n for n in ("tokenizer.model", "vocab.json") if (folder / n).is_file()]
            hint = (
                f" (found {', '.join(other)}: convert it once with transformers: "
                "AutoTokenizer.from_pretrained(folder).save_pretrained(folder))" if other else ""
            )
            raise TokenizerMissingError(f"{folder} has no {TOKENIZER_FILE}{hint}")
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises a bare Exception
            raise TokenizerMissingError(
                f"cannot read {path} ({error}); save the tokenizer again with save_pretrained"
            ) from error
        return cls(backend, _special_tokens(folder), fallback_ids)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the post-processor adds BOS etc."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def save(self, folder: Path) -> None:
        """Writes tokenizer.json and a tokenizer_config.json naming the special tokens, in the
        layout Hugging Face's fast tokenizers read."""
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / TOKENIZER_FILE))
        config = {f"{role}_token": token for role, token in self.special_tokens.items()}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _special_tokens(folder: Path) -> dict[str, str]:
    """role -> token text, from tokenizer_config.json, else special_tokens_map.json."""
    found: dict[str, str] = {}
    for name in (SPECIAL_MAP_FILE, CONFIG_FILE):  # the config, read last, wins
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise TokenizerMissingError(f"{path} is not valid JSON ({error})") from error
        for role in SPECIAL_ROLES:
            token = _token_text(data.get(f"{role}_token"))
            if token is not None:
                found[role] = token
    return found


def _token_text(value: Any) -> str | None:
    """A special token as saved: a string, or an added-token object with its "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None
