"""How the next target is asked to continue an answer that another target began."""

from __future__ import annotations

from .._config import ProviderConfig
from .._messages import Message, UpstreamRequest
from .._vocab import ContinuationForm


def continuation_form(
    config: ProviderConfig, *, delivered: str, prefill_rejected: bool, json_answer: bool = False
) -> ContinuationForm:
    """Choose how to ask ``config``'s provider to go on from ``delivered``.

    A JSON answer (``json_answer``) is continued only by prefill, on a provider that honours
    it: an instruction to go on is no way to keep JSON whole. Elsewhere the provider is asked
    afresh (``replay``), and the splice guard decides whether its answer joins.
    """
    if not delivered:
        return "fresh"
    if json_answer:
        return "prefill" if config.honours_prefill and not prefill_rejected else "replay"
    mode = config.continuation
    if mode == "replay":
        return "replay"
    if mode == "instruct":
        return "instruct"
    if mode == "prefill":
        return "instruct" if prefill_rejected else "prefill"
    if config.honours_prefill and not prefill_rejected:
        return "prefill"
    return "instruct"


def continuation_request(
    original: UpstreamRequest, *, delivered: str, form: ContinuationForm, instruct_prompt: str
) -> UpstreamRequest:
    """Build the request that asks for what follows ``delivered`` in the chosen form."""
    if form in ("fresh", "replay"):
        return original
    messages = original.messages + (Message(role="assistant", content=delivered),)
    if form == "prefill":
        return UpstreamRequest(
            model=original.model, messages=messages, params=original.params, prefill=True
        )
    messages = messages + (Message(role="user", content=instruct_prompt),)
    return UpstreamRequest(model=original.model, messages=messages, params=original.params)
