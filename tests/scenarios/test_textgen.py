"""Deterministic answer text and where providers continue it."""

from __future__ import annotations

import pytest

from actors import Message
from scenarios import answer_basis, answer_tokens, continuation, is_continue_instruction

USER = Message(role="user", content="Tell me about cats.")
CONVERSATION = (Message(role="system", content="Be brief."), USER)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def test_same_conversation_gives_same_answer() -> None:
    assert answer_tokens(CONVERSATION) == answer_tokens(list(CONVERSATION))


def test_golden_answer_is_stable_across_processes() -> None:
    # Pins the hash construction: Python's salted hash() would change this on every run.
    tokens = answer_tokens([Message(role="user", content="hi")])
    assert tokens[:6] == ["That", " patient", " library", " watches", " the", " morning"]


def test_answer_depends_on_seed_and_conversation() -> None:
    base = answer_tokens(CONVERSATION)
    assert answer_tokens(CONVERSATION, seed=1) != base
    assert answer_tokens([USER]) != base
    assert (
        answer_tokens(
            [Message(role="system", content="Be brief."), Message(role="user", content="x")]
        )
        != base
    )


@pytest.mark.parametrize("seed", range(20))
def test_answer_is_plausible_length_and_shape(seed: int) -> None:
    tokens = answer_tokens(CONVERSATION, seed=seed)
    assert 40 <= len(tokens) <= 140
    assert tokens[-1] == "."
    assert all(tokens) and "".join(tokens).isascii()
    assert all(not t.endswith((" ", "\n")) for t in tokens)  # whitespace only ever leads
    assert tokens[0][0].isupper()


def test_length_is_exact_when_given() -> None:
    assert len(answer_tokens(CONVERSATION, length=7)) == 7
    assert answer_tokens(CONVERSATION, length=7) == answer_tokens(CONVERSATION, length=200)[:7]


def test_exotic_words_bring_multibyte_text_and_odd_whitespace() -> None:
    text = "".join(
        t for seed in range(5) for t in answer_tokens(CONVERSATION, seed=seed, words="exotic")
    )
    assert any(len(ch.encode()) == 4 for ch in text)  # emoji
    assert any(len(ch.encode()) == 3 for ch in text)  # CJK
    assert any(len(ch.encode()) == 2 for ch in text)  # accents
    assert "\n" in text and "  " in text


def test_answer_ignores_trailing_assistant_and_continue_instruction() -> None:
    tokens = answer_tokens(CONVERSATION)
    partial = assistant("".join(tokens[:5]))
    assert answer_tokens((*CONVERSATION, partial)) == tokens
    instruct = (
        *CONVERSATION,
        partial,
        Message(role="user", content="Continue exactly where you stopped."),
    )
    assert answer_basis(instruct) == CONVERSATION
    assert answer_tokens(instruct) == tokens


def test_continue_instruction_detection() -> None:
    assert is_continue_instruction("Please CONTINUE.")
    assert is_continue_instruction("resume your answer")
    assert not is_continue_instruction("What about dogs?")


def test_no_earlier_answer_starts_fresh() -> None:
    tokens = answer_tokens(CONVERSATION)
    assert continuation(CONVERSATION, tokens) == (0, "fresh")


@pytest.mark.parametrize("words", ["plain", "exotic"])
def test_prefill_at_every_boundary_continues_exactly(words: str) -> None:
    tokens = answer_tokens(CONVERSATION, seed=4, words=words)  # type: ignore[arg-type]
    for i in range(len(tokens) + 1):
        prefix = "".join(tokens[:i])
        start, mode = continuation((*CONVERSATION, assistant(prefix)), tokens)
        assert (start, mode) == (i, "prefill")
        assert prefix + "".join(tokens[start:]) == "".join(tokens)


def test_instruct_mode_continues_from_the_assistant_text() -> None:
    tokens = answer_tokens(CONVERSATION)
    for i in (0, 1, 17, len(tokens)):
        convo = (
            *CONVERSATION,
            assistant("".join(tokens[:i])),
            Message(role="user", content="continue"),
        )
        assert continuation(convo, tokens) == (i, "instruct")


@pytest.mark.parametrize("trailing", [" ", "\n", " \n  "])
def test_whitespace_stripped_prefill_continues_after_the_stripped_text(trailing: str) -> None:
    tokens = answer_tokens(CONVERSATION)
    prefix = "".join(tokens[:9])
    start, mode = continuation((*CONVERSATION, assistant(prefix + trailing)), tokens)
    assert (start, mode) == (9, "prefill")
    assert tokens[start].startswith(" ")  # the next token keeps its leading space


def test_text_that_is_not_a_prefix_restarts() -> None:
    tokens = answer_tokens(CONVERSATION)
    for bogus in ("Something else entirely.", "".join(tokens[:4])[:-1], "".join(tokens[:4]) + "x"):
        assert continuation((*CONVERSATION, assistant(bogus)), tokens) == (0, "restart")


def test_ordinary_follow_up_question_is_a_fresh_answer() -> None:
    first = answer_tokens(CONVERSATION)
    follow_up = (
        *CONVERSATION,
        assistant("".join(first)),
        Message(role="user", content="And dogs?"),
    )
    assert continuation(follow_up, answer_tokens(follow_up)) == (0, "fresh")
    assert answer_tokens(follow_up) != first
