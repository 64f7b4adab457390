"""The splice guard on its own: restarts, overlaps, continuations and divergences."""

from hypothesis import given
from hypothesis import strategies as st

from actors.policy._splice import Diverged, Forward, Hold, SpliceGuard


def splice(delivered: str, pieces: list[str]) -> str | Diverged:
    guard = SpliceGuard(delivered)
    out = []
    for piece in pieces:
        step = guard.feed(piece)
        if isinstance(step, Diverged):
            return step
        if isinstance(step, Forward):
            out.append(step.text)
    step = guard.finish()
    if isinstance(step, Diverged):
        return step
    out.append(step.text)
    return delivered + "".join(out)


def test_a_true_continuation_passes_through():
    assert splice("The quick brown", [" fox", " jumps"]) == "The quick brown fox jumps"


def test_a_restart_is_swallowed_while_it_matches():
    assert splice("The quick brown", ["The", " quick", " brown", " fox"]) == "The quick brown fox"


def test_a_restart_is_matched_ignoring_whitespace_differences():
    assert (
        splice("The quick  brown\nfox", ["The quick brown fox", " jumps"])
        == "The quick  brown\nfox jumps"
    )


def test_repeated_last_words_are_trimmed():
    assert splice("one two three four", [" three", " four", " five"]) == "one two three four five"


def test_a_restart_that_departs_from_the_delivered_text_diverges():
    result = splice("The quick brown fox", ["The", " quick", " red", " fox"])
    assert isinstance(result, Diverged)
    assert result.text == "The quick red"


def test_text_is_held_until_it_can_be_judged():
    guard = SpliceGuard("The quick brown fox")
    assert isinstance(guard.feed("The"), Hold)
    assert isinstance(guard.feed(" quick"), Hold)


def test_prefill_whitespace_at_the_join_is_not_doubled():
    assert splice("Hello there ", [" world"]) == "Hello there world"


def test_a_restart_that_stops_early_adds_nothing():
    assert (
        splice("The quick brown fox jumps over", ["The quick brown fox"])
        == "The quick brown fox jumps over"
    )


def test_multibyte_text_splices():
    assert splice("日本 語で", ["日本", "語で", "す。"]) == "日本 語です。"


words = st.sampled_from(["alpha", "beta", "gamma", "delta", "café", "日本", "🙂", "x", "naïve"])
spaces = st.sampled_from([" ", "  ", "\n", " \n"])


@st.composite
def answers(draw):
    n = draw(st.integers(4, 30))
    tokens = [draw(words)]
    for _ in range(n - 1):
        tokens.append(draw(spaces) + draw(words))
    return tokens


@given(answers(), st.data())
def test_any_restart_of_the_same_answer_joins_to_exactly_that_answer(tokens, data):
    cut = data.draw(st.integers(1, len(tokens) - 1))
    delivered = "".join(tokens[:cut])
    result = splice(delivered, tokens)
    assert result == "".join(tokens)


@st.composite
def answers_without_repeats(draw):
    vocabulary = [f"{stem}{i}" for stem in ("tok", "café", "日本", "w") for i in range(30)]
    chosen = draw(st.lists(st.sampled_from(vocabulary), min_size=4, max_size=30, unique=True))
    return [chosen[0]] + [draw(spaces) + word for word in chosen[1:]]


@given(answers_without_repeats(), st.data())
def test_a_true_continuation_joins_exactly(tokens, data):
    cut = data.draw(st.integers(1, len(tokens) - 1))
    delivered = "".join(tokens[:cut])
    assert splice(delivered, tokens[cut:]) == "".join(tokens)


def test_a_continuation_that_truly_repeats_the_last_two_words_is_indistinguishable_from_overlap():
    # The known cost of trimming overlaps: an answer that really says the same two words twice
    # across the join loses the repeat. Recorded here so a change to that rule is deliberate.
    assert splice("it is what it is", [" what it", " is"]) == "it is what it is"
