"""What the mock answers: the model names that set its pacing and the text of every token.

The mock (``_mock``) renders its answers from these, and the load generator (``_run``) checks
what clients receive against them. They live apart from the mock because it runs as
``python -m scenarios.bench._mock``, so the package must not import it: runpy warns on stderr
when the module it runs was already imported, and the benchmark counts its children's stderr
lines as trouble.
"""

from __future__ import annotations

DEFAULT_TOKENS = 200  # what a model name that is not ours gets


def token_text(index: int) -> str:
    """The text of token ``index`` of every mock answer (words of varying length)."""
    return f"w{index % 997} "


def answer_text(tokens: int) -> str:
    """The whole text of a ``tokens``-token mock answer: what a client must receive."""
    return "".join(token_text(i) for i in range(tokens))


def model_name(tokens: int, delay: float) -> str:
    """The model name that asks the mock for ``tokens`` tokens, ``delay`` seconds apart."""
    return f"mock-{tokens}-{delay:g}"


def parse_model(model: str) -> tuple[int, float]:
    """``(tokens, delay)`` for a model name; the defaults for a name that is not ours."""
    parts = model.split("-")
    if len(parts) == 3 and parts[0] == "mock":
        try:
            tokens, delay = int(parts[1]), float(parts[2])
        except ValueError:
            pass
        else:
            if 0 <= tokens <= 100_000 and 0 <= delay <= 60:
                return tokens, delay
    return DEFAULT_TOKENS, 0.0
