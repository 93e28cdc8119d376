"""A model folder's chat template (Jinja), rendered for an NPC prompt.

Instruct models ship a template that wraps messages in the model's own markers; it lives in
`chat_template.jinja` or in the `chat_template` field of `tokenizer_config.json` (a string, or
a list of named templates of which "default" is used). It is rendered in a sandboxed Jinja
environment with the globals and filters the templates of Llama, Qwen2 and Mistral folders use
(`raise_exception`, `strftime_now`, `tojson`), the folder's special tokens as variables, and
`add_generation_prompt=True`, so the model's answer follows the rendered text directly.

An NPC prompt becomes two messages: the static part as the system message and the dynamic part
as the user message. The static part's rendered text is the rendering cut just before the user
message's content, so its KV can be reused whatever the dynamic part is.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from lego_embed.errors import ChatTemplateError

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
_SENTINEL = "\u2063lego-embed-dynamic-part\u2063"


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the prompt: {message}")


def _strftime_now(pattern: str) -> str:
    return datetime.now().strftime(pattern)


class ChatTemplate:
    """A compiled chat template. `special_tokens`: role -> token text (bos, eos, ...), passed to
    the template as `bos_token`, `eos_token`, ..."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None) -> None:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except TemplateError as error:
            raise ChatTemplateError(f"the chat template does not compile: {error}") from error
        self.source = source
        self._variables = {f"{role}_token": token
                           for role, token in (special_tokens or {}).items()}

    @classmethod
    def from_folder(cls, folder: Path, special_tokens: dict[str, str] | None = None
                    ) -> ChatTemplate | None:
        """The folder's template, or None when it has none."""
        path = Path(folder) / TEMPLATE_FILE
        if path.is_file():
            return cls(path.read_text(), special_tokens)
        config_path = Path(folder) / CONFIG_FILE
        if not config_path.is_file():
            return None
        try:
            source = json.loads(config_path.read_text()).get("chat_template")
        except json.JSONDecodeError as error:
            raise ChatTemplateError(f"{config_path} is not valid JSON ({error})") from error
        if isinstance(source, list):
            named = {entry.get("name"): entry.get("template") for entry in source
                     if isinstance(entry, dict)}
            source = named.get("default")
        if source is None:
            return None
        if not isinstance(source, str):
            raise ChatTemplateError(f"{config_path}: chat_template must be a string")
        return cls(source, special_tokens)

    def render_messages(self, messages: list[dict[str, str]]) -> str:
        """The template applied to `messages`, with the generation prompt at the end."""
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, tools=None, documents=None,
                **self._variables,
            )
        except ChatTemplateError:
            raise
        except TemplateError as error:
            raise ChatTemplateError(f"the chat template failed to render: {error}") from error

    def render(self, static: str, dynamic: str) -> tuple[str, str]:
        """(whole rendered prompt, its static start): system = static, user = dynamic. A template
        that refuses system messages (some Mistral ones) gets the static part at the start of
        the user message instead."""
        def with_system(user: str) -> list[dict[str, str]]:
            return [{"role": "system", "content": static}, {"role": "user", "content": user}]

        def in_user(user: str) -> list[dict[str, str]]:
            return [{"role": "user", "content": f"{static}\n\n{user}" if static else user}]

        if not static:
            return self.render_messages(in_user(dynamic)), ""
        try:
            text = self.render_messages(with_system(dynamic))
            messages = with_system
        except ChatTemplateError:
            text = self.render_messages(in_user(dynamic))
            messages = in_user
        marked = self.render_messages(messages(_SENTINEL))
        cut = marked.find(_SENTINEL)
        static_text = marked[:cut] if cut >= 0 and text.startswith(marked[:cut]) else ""
        return text, static_text
