"""A line's text as its tokens arrive: incremental decoding, stop strings, what may be shown.

Text is decoded from all of the line's tokens so far (a token's text can depend on the ones
before it, and one character can span tokens), then compared with what was already released.
Text that could still turn out to be the start of a stop string, or that ends in an unfinished
character (U+FFFD from a partial UTF-8 sequence), is held back until the next token settles it.
Whatever is released is never taken back, so the released pieces joined are the finished line.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class LineText:
    """Tracks one line. `update(ids)` takes every line token so far and returns the newly
    released text; `stopped` tells whether a stop string ended the line; `finish()` releases
    the rest (the line cut before its stop string, leading blanks removed); `released` is then
    the finished line."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._text = ""
        self.released = ""
        self.stopped = False

    def _cut(self, text: str) -> tuple[str, bool]:
        """The text up to the first stop string (and whether one was found)."""
        cuts = [text.find(s) for s in self._stop if s in text]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def _held_back(self, text: str) -> int:
        """How many trailing characters might still become a stop string or a character."""
        hold = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        if text.endswith(REPLACEMENT):
            hold = max(hold, len(text) - len(text.rstrip(REPLACEMENT)))
        return hold

    def update(self, line_ids: Sequence[int]) -> str:
        text = self._tokenizer.decode(list(line_ids), skip_special_tokens=True).lstrip()
        text, self.stopped = self._cut(text)
        self._text = text
        shown = text if self.stopped else text[: len(text) - self._held_back(text)]
        return self._release(shown)

    def finish(self) -> str:
        """Releases everything left; the finished line is `released` afterwards."""
        return self._release(self._text)

    def _release(self, shown: str) -> str:
        if len(shown) <= len(self.released) or not shown.startswith(self.released):
            return ""
        new = shown[len(self.released):]
        self.released = shown
        return new
