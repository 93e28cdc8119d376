"""Prompt templates with named fields: `"hp {hp}, last seen {last_seen}"` filled per request.

The template is checked when it is made: malformed braces, unnamed (`{}`) or positional
(`{0}`) fields, attribute or index lookups and nested fields are errors, and when the game
declares the fields it will send, a template field outside them is an error naming it. Filling
it checks every field is given (the error names the missing one) and reports the fields given
that the template does not use, so a typo in a field name is seen rather than silently ignored.
Fields take Python format specs (`{distance:.1f}`); literal braces are written `{{` and `}}`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lego_embed.errors import PromptTemplateError

_CONVERSIONS = {None: format, "s": lambda v, spec: format(str(v), spec),
                "r": lambda v, spec: format(repr(v), spec)}


@dataclass(frozen=True)
class FilledTemplate:
    """text: the template with every field filled; unused: fields given but not in the
    template (sorted)."""

    text: str
    unused: tuple[str, ...]


class PromptTemplate:
    """A checked template (see the module docstring). `fields` lists the template's field
    names in order of first use; `declared` the fields the game said it sends (None: any)."""

    def __init__(self, text: str, declared: Iterable[str] | None = None) -> None:
        if not isinstance(text, str):
            raise PromptTemplateError(f"a prompt template must be a string, got {text!r}")
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as error:
            raise PromptTemplateError(
                f"the prompt template is malformed ({error}); write fields as {{name}} and "
                "literal braces as {{{{ and }}}}"
            ) from error
        self.text = text
        self._parts: list[tuple[str, str | None, str, str | None]] = []
        fields: list[str] = []
        for literal, name, spec, conversion in parts:
            if name is not None:
                self._check_name(name, spec)
                if conversion not in _CONVERSIONS:
                    raise PromptTemplateError(
                        f"field '{name}': conversion !{conversion} is not supported (use !s or !r)"
                    )
                if name not in fields:
                    fields.append(name)
            self._parts.append((literal, name, spec or "", conversion))
        self.fields = tuple(fields)
        self.declared = None if declared is None else tuple(declared)
        if self.declared is not None:
            unknown = [name for name in self.fields if name not in self.declared]
            if unknown:
                raise PromptTemplateError(
                    f"field '{unknown[0]}' of the prompt template is unknown; the declared "
                    f"fields are {', '.join(self.declared) or '(none)'}"
                )

    @staticmethod
    def _check_name(name: str, spec: str) -> None:
        if name == "" or name.isdigit():
            raise PromptTemplateError(
                f"the prompt template has an unnamed field {{{name}}}; name every field, "
                "e.g. {hp}"
            )
        if not name.isidentifier():
            raise PromptTemplateError(
                f"field '{name}': use a plain name (letters, digits, _), without . or [ ]"
            )
        if "{" in (spec or ""):
            raise PromptTemplateError(f"field '{name}': nested fields in a format spec are not "
                                      "supported")

    @property
    def unused_declared(self) -> tuple[str, ...]:
        """Declared fields the template never shows the model."""
        return tuple(n for n in self.declared or () if n not in self.fields)

    def fill(self, values: Mapping[str, Any]) -> FilledTemplate:
        """The template with `values` filled in (PromptTemplateError names a missing field or
        a value its format spec does not fit)."""
        if not isinstance(values, Mapping):
            raise PromptTemplateError(
                f"fields must be a dictionary of name -> value, got {type(values).__name__}"
            )
        missing = [name for name in self.fields if name not in values]
        if missing:
            raise PromptTemplateError(
                f"field '{missing[0]}' is missing; the prompt template needs "
                f"{', '.join(self.fields)}"
            )
        pieces = []
        for literal, name, spec, conversion in self._parts:
            pieces.append(literal)
            if name is None:
                continue
            try:
                pieces.append(_CONVERSIONS[conversion](values[name], spec))
            except (ValueError, TypeError) as error:
                raise PromptTemplateError(
                    f"field '{name}': value {values[name]!r} does not fit the format "
                    f"'{spec}' ({error})"
                ) from error
        unused = tuple(sorted(str(k) for k in values if k not in self.fields))
        return FilledTemplate("".join(pieces), unused)
