"""The fault buttons' endpoint: ``GET /sim/faults`` and ``POST /sim/faults/{provider}``.

Baton's embedded default (``baton serve`` with no config) runs simulated providers, and its
page offers buttons that break one on purpose (a reset now, a stall, 503s for a while) so a
newcomer can watch a failover and a breaker. The simulators live in ``scenarios``, which
``transport`` must not import: they hand ``run_baton`` a ``FaultInjector``, and only then does
the HTTP app answer these paths (otherwise 404, and the page hides its buttons). They change
the behaviour of Baton's own simulators only, never a real provider's.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import orjson

from actors import clip

from ._openai_codec import APIError

Fault = Literal["reset", "stall", "status503"]
FAULTS: tuple[Fault, ...] = get_args(Fault)
MAX_SECONDS = 600.0  # a fault lasts at most this long: a typo must not break a simulator for days


class FaultInjector(Protocol):
    """Breaks Baton's simulated providers on request (see the module docstring)."""

    def providers(self) -> list[str]:
        """The names of the providers faults can be injected into."""
        ...

    def inject(self, provider: str, fault: Fault, seconds: float) -> None:
        """Make ``provider`` fail as ``fault`` says, for ``seconds`` (``reset``: its streams
        now); ``ValueError`` for an unknown provider or fault."""
        ...


def fault_list(injector: FaultInjector) -> bytes:
    """The JSON of ``GET /sim/faults``: each provider with the faults it takes."""
    return orjson.dumps([{"provider": p, "faults": list(FAULTS)} for p in injector.providers()])


def parse_fault(body: bytes) -> tuple[Fault, float]:
    """The fault and its seconds of a ``POST /sim/faults/{provider}`` body; ``APIError`` 400."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, "invalid_json", f"The request body is not valid JSON ({exc})."
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_type", 'The body must be {"fault": ..., "seconds": 20}.')
    fault = data.get("fault")
    if fault not in FAULTS:
        raise APIError(
            400, "invalid_value",
            f"Unknown fault {clip(str(fault))}; send one of {', '.join(FAULTS)}.", param="fault",
        )  # fmt: skip
    seconds = data.get("seconds", 20)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 < seconds <= MAX_SECONDS
    ):
        raise APIError(
            400, "invalid_value",
            f"'seconds' must be a number of seconds above 0 and at most {MAX_SECONDS:g}.",
            param="seconds",
        )  # fmt: skip
    return fault, float(seconds)
