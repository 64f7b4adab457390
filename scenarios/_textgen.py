"""Deterministic, plausible answer text for fake providers.

``answer_tokens`` turns a conversation and a seed into the answer a fake provider gives, as a
list of tokens (a word with its leading whitespace, or punctuation). The same conversation gives
the same answer in every process, on every provider kind, so a stream that fails over between
two fakes with the same seed can be checked token for token. ``continuation`` says where a
provider resumes that answer when the conversation already holds part of it (prefill or the
"instruct" continue request).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Literal

import orjson

from actors import Message

Words = Literal["plain", "exotic"]
ContinuationMode = Literal["fresh", "prefill", "instruct", "restart"]

_DETERMINERS = ("the", "a", "every", "this", "our", "some", "each", "that")
_ADJECTIVES = (
    "quiet", "bright", "careful", "small", "patient", "distant", "simple", "steady",
    "curious", "gentle", "busy", "clever", "old", "new", "warm", "narrow",
)  # fmt: skip
_NOUNS = (
    "cat", "river", "server", "answer", "garden", "request", "engineer", "window",
    "stream", "letter", "proxy", "morning", "signal", "library", "harbour", "question",
)  # fmt: skip
_VERBS = (
    "reaches", "follows", "finds", "carries", "watches", "builds", "keeps", "opens",
    "crosses", "answers", "holds", "sends", "remembers", "measures", "repairs", "greets",
)  # fmt: skip
_PREPOSITIONS = ("near", "behind", "across", "under", "beside", "beyond", "through", "into")
_CONNECTIVES = ("and", "while", "because", "so", "but")
# Multi-byte words (2-, 3- and 4-byte UTF-8) so that byte-level bugs in a splice or an SSE
# decoder show up as wrong text rather than passing by luck.
_EXOTIC = ("café", "naïve", "日本", "🙂", "façade", "Zürich", "東京", "🚀")

# Sentence shapes: D determiner, A adjective, N noun, V verb, P preposition, C connective.
_SHAPES = (
    "DANVDN.",
    "DNVDAN.",
    "DANVDNPDN.",
    "DNVDN,CDNVDAN.",
    "DAN,DAN,VDN.",
    "DNVPDAN.",
)

_CONTINUE_WORD = re.compile(r"\b(continu\w*|resume)\b", re.IGNORECASE)


def is_continue_instruction(text: str) -> bool:
    """True when a user message asks the model to continue its previous answer.

    Any message mentioning "continue" (or "resume") counts; Baton's instruct-mode request
    must contain that word for the fakes to recognise it.
    """
    return _CONTINUE_WORD.search(text) is not None


def answer_basis(messages: Sequence[Message]) -> tuple[Message, ...]:
    """The part of a conversation that determines the answer.

    A trailing continue instruction after an assistant turn, and then a trailing assistant
    message, are dropped: asking to continue an answer does not change which answer it is.
    """
    basis = tuple(messages)
    if (
        len(basis) >= 2
        and basis[-1].role == "user"
        and basis[-2].role == "assistant"
        and is_continue_instruction(basis[-1].text)
    ):
        basis = basis[:-1]
    if basis and basis[-1].role == "assistant":
        basis = basis[:-1]
    return basis


class _Draws:
    """An endless stream of deterministic integers from SHA-256 in counter mode."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._words: Iterator[int] = self._generate()

    def _generate(self) -> Iterator[int]:
        counter = 0
        while True:
            block = hashlib.sha256(self._key + counter.to_bytes(8, "big")).digest()
            for i in range(0, 32, 4):
                yield int.from_bytes(block[i : i + 4], "big")
            counter += 1

    def below(self, n: int) -> int:
        return next(self._words) % n

    def pick(self, options: Sequence[str]) -> str:
        return options[self.below(len(options))]

    def chance(self, percent: int) -> bool:
        return self.below(100) < percent


def answer_tokens(
    messages: Sequence[Message],
    *,
    seed: int = 0,
    length: int | None = None,
    words: Words = "plain",
) -> list[str]:
    """The deterministic answer to a conversation, as tokens that join into the text.

    The answer depends only on ``answer_basis(messages)`` and ``seed``. ``length`` fixes the
    number of tokens; otherwise the answer is whole sentences, at least 40-120 tokens (chosen by
    the hash) and ending in a full stop. ``words="exotic"`` mixes in
    multi-byte UTF-8 words and odd whitespace (double spaces, newlines) before some words.
    Whitespace always leads a token, so no prefix of the answer ends in whitespace.
    """
    basis = [[m.role, m.text] for m in answer_basis(messages)]
    key = orjson.dumps({"seed": seed, "words": words, "conversation": basis})
    draws = _Draws(hashlib.sha256(key).digest())
    target = length if length is not None else 40 + draws.below(81)
    exotic = words == "exotic"
    tokens: list[str] = []
    while len(tokens) < target:
        first = True
        for slot in draws.pick(_SHAPES):
            if slot in ".,":
                tokens.append(slot)
                continue
            word = _word(draws, slot, exotic)
            if first:
                word = word[:1].upper() + word[1:]
            lead = "" if first and not tokens else _space(draws, exotic, first)
            tokens.append(lead + word)
            first = False
    return tokens if length is None else tokens[:length]


def _word(draws: _Draws, slot: str, exotic: bool) -> str:
    if exotic and slot in "AN" and draws.chance(25):
        return draws.pick(_EXOTIC)
    table = {
        "D": _DETERMINERS,
        "A": _ADJECTIVES,
        "N": _NOUNS,
        "V": _VERBS,
        "P": _PREPOSITIONS,
        "C": _CONNECTIVES,
    }[slot]
    return draws.pick(table)


def _space(draws: _Draws, exotic: bool, sentence_start: bool) -> str:
    if not exotic:
        return " "
    roll = draws.below(100)
    if sentence_start and roll < 30:
        return "\n\n" if roll < 10 else "\n"
    return "  " if roll >= 92 else " "


def continuation(
    messages: Sequence[Message], tokens: Sequence[str]
) -> tuple[int, ContinuationMode]:
    """Where a provider resumes ``tokens`` (the answer) for this conversation, and why.

    Returns ``(i, mode)``: the provider sends ``tokens[i:]``. ``mode`` is ``fresh`` (no
    earlier answer text), ``prefill`` (the last message is the assistant text P),
    ``instruct`` (assistant text P, then a user message asking to continue) or ``restart``
    (P is not the answer's text up to any token boundary, so the provider answers from the
    start). ``i`` is the longest boundary where the joined tokens equal P, or equal P with its
    trailing whitespace stripped (Anthropic strips it; the next token keeps its leading space).
    """
    msgs = tuple(messages)
    if msgs and msgs[-1].role == "assistant":
        mode: ContinuationMode = "prefill"
        prefix = msgs[-1].text
    elif len(msgs) >= 2 and answer_basis(msgs) == msgs[:-2]:
        mode = "instruct"
        prefix = msgs[-2].text
    else:
        return 0, "fresh"
    stripped = prefix.rstrip()
    joined = ""
    best: int | None = None
    for i in range(len(tokens) + 1):
        if joined in (prefix, stripped):
            best = i
        if i == len(tokens) or len(joined) > len(prefix):
            break
        joined += tokens[i]
    if best is None:
        return 0, "restart"
    return best, mode
