"""Which probe a provider gets, and what one probe's answer says about its health. Pure.

An answer that says the probed endpoint does not exist (HTTP 404, 405 or 501) is no evidence
that the provider is down: many OpenAI-compatible servers have no ``GET /models``. Such an
answer to a ``models`` probe moves the provider to ``chat`` probes (a one-token completion on a
route's model) from then on. The same answer to a ``chat`` probe (the provider was given no
probe model, or has no such endpoint) makes every such probe ``inconclusive``: live traffic
alone judges the provider. Neither counts as a failure. Any other failure does.

The health actor keeps the ``ProbePlan``, feeds each probe's outcome to ``judge`` and logs the
``change`` it returns (each at most once per provider); the breaker only hears the verdict.
"""

from __future__ import annotations

from typing import Literal

import attrs

from .._errors import Failure, FailureKind
from .._provider import ProbeKind
from .._vocab import ProbeVerdict

# Statuses by which a server says "no such endpoint here", not "I am unwell".
ENDPOINT_MISSING = frozenset({404, 405, 501})

# News a judgement brings, for the health actor to log once.
ProbeChange = Literal[
    "to_chat",  # the models endpoint is missing: chat probes from now on
    "inconclusive",  # the chat probe's endpoint is missing too: probes cannot judge
]


@attrs.frozen(kw_only=True)
class ProbePlan:
    """How one provider is probed now, and what its probes have taught so far."""

    kind: ProbeKind
    # The status that showed the configured probe's endpoint missing, once one did.
    missing_status: int | None = None
    inconclusive: bool = False  # the chat probe's endpoint is missing as well


@attrs.frozen(kw_only=True)
class ProbeJudgement:
    """What one probe's outcome means: the plan from now on, the verdict, the news to log."""

    plan: ProbePlan
    verdict: ProbeVerdict
    change: ProbeChange | None = None


def endpoint_missing(failure: Failure) -> bool:
    """Whether ``failure`` is a server saying the requested endpoint does not exist."""
    return failure.kind is FailureKind.STATUS and failure.status in ENDPOINT_MISSING


def judge(plan: ProbePlan, failure: Failure | None) -> ProbeJudgement:
    """Judge the outcome of a probe of kind ``plan.kind``: ``failure`` is None when it passed."""
    if failure is None:
        return ProbeJudgement(plan=plan, verdict="ok")
    if not endpoint_missing(failure):
        return ProbeJudgement(plan=plan, verdict="failed")
    if plan.kind == "models":
        moved = attrs.evolve(plan, kind="chat", missing_status=failure.status)
        return ProbeJudgement(plan=moved, verdict="inconclusive", change="to_chat")
    if plan.inconclusive:
        return ProbeJudgement(plan=plan, verdict="inconclusive")
    settled = attrs.evolve(
        plan, inconclusive=True, missing_status=plan.missing_status or failure.status
    )
    return ProbeJudgement(plan=settled, verdict="inconclusive", change="inconclusive")
