"""Text fragments -> speakable pieces: where a running utterance may be cut for synthesis.

A language model writes text a few characters at a time. Synthesising each fragment alone
would sound choppy (and an engine's first audio costs the same for "Hel" as for a clause),
so fragments are gathered here and handed out at clause boundaries: the first clause as soon
as it is complete (time to first audio), later ones as whole runs of complete clauses (fewer,
longer utterances sound better). Sans-IO: no clock, no engine.
"""

from __future__ import annotations

import re

# A clause ends at . , ; : ! ? (or their CJK forms, or a line break) followed by white space;
# the fragment after it may still be on its way, so a mark at the very end of the text is not a
# boundary yet ("3." might become "3.5").
_BOUNDARY = re.compile(r"[.!?;:,\u3002\uff01\uff1f\uff0c\u3001]+[\"')\]\u201d\u2019]*(?=\s)|\n")
MAX_WORDS = 30  # a run this long without any boundary is cut at its last word (a model that never punctuates)
MAX_CHARS = 400  # one utterance at most (Chatterbox's budget is about 70 tokens of text)


class ClauseBuffer:
    """Gathers fragments; ``ready()`` returns the text that may be spoken now."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self.text = ""
        self.max_chars = max_chars

    def __len__(self) -> int:
        return len(self.text)

    def feed(self, fragment: str) -> None:
        self.text += fragment

    def ready(self) -> str | None:
        """Everything up to the last complete clause boundary (None: no clause complete yet)."""
        cut = 0
        for m in _BOUNDARY.finditer(self.text):
            if m.end() > self.max_chars and cut:
                break
            cut = m.end()
        if not cut:
            words = self.text.split()
            if len(words) <= MAX_WORDS and len(self.text) <= self.max_chars:
                return None
            cut = self.text.rfind(" ", 0, self.max_chars)
            if cut <= 0:
                cut = min(len(self.text), self.max_chars)
        return self._take(cut)

    def flush(self) -> str | None:
        """All that is buffered (the application said the utterance is complete)."""
        return self._take(len(self.text))

    def clear(self) -> None:
        self.text = ""

    def _take(self, cut: int) -> str | None:
        out, self.text = self.text[:cut], self.text[cut:]
        if not self.text.strip():
            self.text = ""
        return out.strip() or None
