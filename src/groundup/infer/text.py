"""Text out of token ids as they come: whole UTF-8 characters only, cut before stop strings.

:class:`TextStream` is what every inference path shows users: the engine keeps one per sequence.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol


class TokenizerLike(Protocol):
    """What text streaming needs of a tokenizer (``groundup.tokenizer.Tokenizer`` has it)."""

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


class TextStream:
    """Turns generated token ids into text deltas, safe to show as they come.

    - Only whole characters: the bytes of all tokens so far are decoded incrementally, so a token that
      ends inside a multi-byte UTF-8 character emits nothing until the character is complete (bytes that
      can never form one become U+FFFD, as ``bytes.decode(errors='replace')`` would).
    - Stop strings: once one appears, the text is cut right before it and ``stopped`` is set. Text that
      could be the start of a stop string is held back until the next tokens settle it, so nothing shown
      ever has to be taken back.

    ``push(token_id)`` returns the new text; ``finish()`` returns the held tail once generation is over.
    The serving engine keeps one per sequence.
    """

    def __init__(self, tokenizer: TokenizerLike, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.stopped = False
        """True once a stop string was found (``text`` then ends right before it)."""
        self.stop_string: str | None = None
        """The stop string that ended the text, if any."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes_fed = 0
        self._text = ""  # decoded so far: the emitted part, then text held back
        self._emitted = 0  # characters of _text already returned
        self._searched = 0  # _text[:_searched] holds no stop string
        self._longest_stop = max((len(s) for s in self.stop), default=0)

    @property
    def text(self) -> str:
        """The text emitted so far (everything, after ``finish()``)."""
        return self._text[: self._emitted]

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became safe to show (often '', never a half character)."""
        if self.stopped:
            raise RuntimeError("TextStream already stopped at a stop string; push no more tokens")
        self.token_ids.append(int(token_id))
        # Decode everything and feed only the new bytes: byte-level BPE decoding only ever appends, and a
        # token's bytes are only meaningful next to its neighbours' (a character can span two tokens).
        data = self.tokenizer.decode_bytes(self.token_ids)
        self._text += self._decoder.decode(data[self._bytes_fed :])
        self._bytes_fed = len(data)
        return self._advance(final=False)

    def finish(self) -> str:
        """Generation is over: return what was held back (an unfinished character becomes U+FFFD)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stop:
            # A stop string may begin in text searched before, as long as it ends in the new text.
            begin = max(self._searched - self._longest_stop + 1, 0)
            found = [(i, s) for s in self.stop if (i := self._text.find(s, begin)) >= 0]
            if found:
                cut, self.stop_string = min(found)
                self._text, self.stopped = self._text[:cut], True
                return self._emit(len(self._text))
            self._searched = len(self._text)
        return self._emit(len(self._text) - (0 if final else self._held()))

    def _held(self) -> int:
        """Length of the longest tail of the text that is the start of some stop string."""
        for n in range(min(self._longest_stop - 1, len(self._text)), 0, -1):
            tail = self._text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _emit(self, until: int) -> str:
        until = max(until, self._emitted)
        delta, self._emitted = self._text[self._emitted : until], until
        return delta
