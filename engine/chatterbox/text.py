"""Text in, utterances out: odd input refused clearly, long input split where the text pauses.

One utterance has a budget: its text tokens and speech tokens share the
KV-cache positions after the voice prefix, and speech is capped at
``max_tokens`` (30 s). Text longer than that would be cut off mid-word (the
cap). So a long text is split into consecutive utterances, at sentence ends
first, then at clause marks (, ; : and dashes), then between words, each piece as
long as the budget allows (fewer joins, natural prosody within a piece).
The engine streams them back to back (``ChatterboxEngine.stream``); the next
piece is submitted as soon as the current one starts speaking, so it is ready
before its turn comes.

Odd input: text with nothing to say (empty, whitespace, only punctuation or
symbols, emoji) is refused with ``EngineError`` naming the problem, never sent
to T3 (stock turns an empty string into "You need to add some text for me to
talk."). Tags the model does not know (``[foo]``) are spoken as the text they
are; Turbo's own tags (``[laugh]``, ``[sigh]`` ...) pass through to its tokenizer.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from ..base import EngineError

MAX_TEXT_CHARS = 4096  # what one request may carry (the HTTP API's limit too)
_SENTENCE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?=[-–—]{1,2}\s)")


def speakable(text: str) -> bool:
    """True when the text has a letter or a digit in any script (something to pronounce)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def check_text(text: str) -> str:
    """The text with whitespace collapsed, or ``EngineError`` saying why it cannot be spoken."""
    if not isinstance(text, str):
        raise EngineError("text must be a string")
    clean = " ".join(text.split())
    if not clean:
        raise EngineError("text is empty")
    if len(clean) > MAX_TEXT_CHARS:
        raise EngineError(f"text is {len(clean)} characters; at most {MAX_TEXT_CHARS} per request")
    if not speakable(clean):
        raise EngineError("text has no letters or digits to speak")
    return clean


def _pack(parts: list[str], fits: Callable[[str], bool]) -> list[str]:
    """Consecutive parts joined greedily while the joined piece fits."""
    out: list[str] = []
    for part in parts:
        if out and fits(out[-1] + " " + part):
            out[-1] = out[-1] + " " + part
        else:
            out.append(part)
    return out


def split_text(text: str, count_tokens: Callable[[str], int], budget: int) -> list[str]:
    """``text`` as pieces of at most ``budget`` text tokens each, cut at the strongest boundary
    that makes them fit: sentences, then clauses, then words (a single word over the budget,
    rare, is cut by characters). Pieces in order; joined with spaces they give the text back."""
    if budget < 1:
        raise ValueError("budget must be >= 1")

    def fits(s: str) -> bool:
        return count_tokens(s) <= budget

    if fits(text):
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE.split(text):
        if not sentence.strip():
            continue
        if fits(sentence):
            pieces.append(sentence)
            continue
        for clause in _CLAUSE.split(sentence):
            if fits(clause):
                pieces.append(clause)
                continue
            for word in clause.split():
                if fits(word):
                    pieces.append(word)
                    continue
                cut = len(word)
                while cut > 1 and not fits(word[:cut]):
                    cut //= 2
                pieces += [word[i:i + cut] for i in range(0, len(word), cut)]
    # pack by strength: a piece never merges across a sentence end unless the whole fits
    return [p for p in _pack(pieces, fits) if p.strip()]
