"""Turn a stream of token bytes into text that is safe to send, honouring stop strings.

Two things must be held back while streaming:
- bytes of an incomplete UTF-8 sequence: a token can end in the middle of a
  character (always so for byte-level vocabularies), and sending half of one
  produces mojibake in every client;
- text that may be the beginning of a stop string: once sent it cannot be taken
  back if the stop string completes on the next token.
Invalid byte sequences (random or broken models emit them) become U+FFFD.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be sent now."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(piece))

    def finish(self) -> str:
        """End of generation: return whatever is still held (unless a stop string hit)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return text[:cut]
        return text

    def _release(self, text: str) -> str:
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _first_stop(self, text: str) -> int | None:
        hits = [(i, stop) for stop in self._stop if (i := text.find(stop)) >= 0]
        if not hits:
            return None
        cut, self.matched = min(hits, key=lambda hit: hit[0])
        return cut

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
