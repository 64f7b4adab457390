"""The splice guard: join a continuation to the text a client already holds, or refuse to.

A target asked to continue ``delivered`` may really continue it, may start again from the
beginning (a restart), may repeat its last words (an overlap), or may write something else
from the beginning (a divergence). The guard holds the new attempt's text back until it can
tell which, comparing with whitespace differences ignored, and then:

- restart: swallows what matches the delivered text and forwards only what comes after;
- overlap: trims the repeated words;
- continuation: forwards everything;
- divergence (a restart that departs from the delivered text): reports ``Diverged`` so the
  session can reset the client's text or end the stream with ``stream_diverged``.

Nothing here awaits; the session feeds it text and acts on what it returns.
"""

from __future__ import annotations

import attrs

# An overlap must span OVERLAP_MIN non-whitespace characters and OVERLAP_WORDS words to be
# trimmed: a continuation that merely begins with the delivered text's last word is left alone.
OVERLAP_MIN = 4
OVERLAP_WORDS = 2
# Matching the delivered text's first RESTART_MIN non-whitespace characters (or half of a
# shorter delivered text) marks a restart rather than a continuation that happens to begin alike.
RESTART_MIN = 16


@attrs.frozen
class Hold:
    """Nothing can be forwarded yet."""


@attrs.frozen
class Forward:
    text: str


@attrs.frozen
class Diverged:
    """The continuation restarted and departed from the delivered text; ``text`` is all of it."""

    text: str


SpliceStep = Hold | Forward | Diverged
_HOLD = Hold()


def _compact(text: str) -> str:
    return "".join(text.split())


def _cut_after(text: str, count: int) -> str:
    """The part of ``text`` after its first ``count`` non-whitespace characters."""
    if count <= 0:
        return text
    seen = 0
    for index, char in enumerate(text):
        if not char.isspace():
            seen += 1
            if seen == count:
                return text[index + 1 :]
    return ""


def _word_starts(text: str) -> list[int]:
    """Compact indices where a word of ``text`` starts, the start of the text first."""
    starts: list[int] = []
    compact_index = 0
    previous_space = True
    for char in text:
        if char.isspace():
            previous_space = True
            continue
        if previous_space:
            starts.append(compact_index)
        previous_space = False
        compact_index += 1
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return starts


class SpliceGuard:
    """Decides how one continuation attempt joins ``delivered``; feed it text as it comes.

    ``replay``: the target was asked afresh, so its answer can only be a restart: one that
    reproduces the delivered text goes on after it, any other is ``Diverged`` (never joined on
    as if it continued).
    """

    def __init__(self, delivered: str, *, replay: bool = False) -> None:
        self._delivered = delivered
        self._replay = replay
        self._dc = _compact(delivered)
        self._ends_in_space = delivered[-1:].isspace()
        self._live = _word_starts(delivered) if self._dc else []
        if replay and self._live:
            self._live = [0]
        # A suffix starting at the k-th word start from the end spans k words.
        self._words_from = {start: len(self._live) - i for i, start in enumerate(self._live)}
        self._word_bounds = set(self._live) | {len(self._dc)}
        # A restart must also match the delivered text's first two whole words (or all of it).
        two_words = self._live[2] if len(self._live) > 2 else len(self._dc)
        self._restart_min = max(min(RESTART_MIN, max(OVERLAP_MIN, len(self._dc) // 2)), two_words)
        self._buffer: list[str] = []
        self._bc = ""
        self._restart_matched = 0
        self._decided = not self._dc
        self._first_forward = True

    def __repr__(self) -> str:
        return f"SpliceGuard(delivered={self._delivered[-40:]!r}, held={''.join(self._buffer)!r})"

    def feed(self, text: str) -> SpliceStep:
        """Take the next piece of the continuation; return what may be forwarded."""
        if self._decided:
            return self._forward(text)
        if (
            not self._buffer
            and not self._replay
            and text[:1].isspace()
            and not self._delivered[:1].isspace()
            and 0 in self._live
        ):
            # A reproduction of the delivered text would begin as it does, not with a space.
            self._live.remove(0)
        self._buffer.append(text)
        self._bc += _compact(text)
        bc, dc = self._bc, self._dc
        still_live = []
        for start in self._live:
            span = min(len(bc), len(dc) - start)
            if dc[start : start + span] == bc[:span]:
                still_live.append(start)
        if 0 in self._live and 0 not in still_live:
            self._restart_matched = _common_prefix(bc, dc)
        elif 0 in still_live:
            self._restart_matched = min(len(bc), len(dc))
        self._live = still_live
        if any(len(bc) < len(dc) - start for start in still_live):
            return _HOLD  # some reading is still open: wait for more text
        return self._decide(final=False)

    def finish(self) -> SpliceStep:
        """The continuation ended; decide with what was held."""
        if self._decided:
            return Forward("")
        bc, dc = self._bc, self._dc
        if not bc:
            self._decided = True
            return Forward("")
        # Only readings whose held text ends where a word of the delivered text ends count.
        incomplete = [
            s for s in self._live if len(bc) < len(dc) - s and s + len(bc) in self._word_bounds
        ]
        if self._replay:
            self._decided = True
            return Diverged("".join(self._buffer))  # a replay that stopped short: not the same
        if 0 in incomplete and len(bc) >= self._restart_min:
            self._decided = True
            return Forward("")  # a restart that stopped early: nothing new
        # Matching the start of a later stretch without reaching the end is no overlap of the
        # last words: those words may simply occur earlier too. Such text is forwarded.
        return self._decide(final=True)

    def _decide(self, *, final: bool) -> SpliceStep:
        self._decided = True
        held = "".join(self._buffer)
        self._buffer.clear()
        dc = self._dc
        complete = [s for s in self._live if len(self._bc) >= len(dc) - s]
        for start in sorted(complete):
            matched = len(dc) - start
            rest = _cut_after(held, matched)
            if start == 0:
                return self._forward(rest)
            # An overlap repeats whole words: what follows it must start a new word.
            at_word_end = not rest or not rest[0].isalnum()
            if matched >= OVERLAP_MIN and self._words_from[start] >= OVERLAP_WORDS and at_word_end:
                return self._forward(rest)
        if self._replay or self._restart_matched >= self._restart_min:
            return Diverged(held)
        return self._forward(held)

    def _forward(self, text: str) -> Forward:
        if self._first_forward and text:
            self._first_forward = False
            if self._ends_in_space:
                # The delivered text already ends in a space (a prefill is sent without it).
                text = text.lstrip()
        return Forward(text)


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index
