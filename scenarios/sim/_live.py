"""``SimulatorFaults``: the page's fault buttons, pressed on Baton's own simulated providers.

``baton serve`` without a config runs two ``SimulatedProvider``s; it hands ``run_baton`` this
``transport.FaultInjector`` over them (by provider name), so ``POST /sim/faults/{provider}``
breaks one of them while Baton keeps serving. It never reaches a real provider: only a name it
was built with is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._simulated import LIVE_FAULTS, SimulatedProvider


class SimulatorFaults:
    """A ``transport.FaultInjector`` over simulated providers, by the provider names Baton uses.

    Call ``inject`` inside the simulators' trio run (the HTTP app does).
    """

    def __init__(self, simulators: Mapping[str, SimulatedProvider]) -> None:
        self._simulators = dict(simulators)

    def providers(self) -> list[str]:
        """The names faults can be injected into, in the order given."""
        return list(self._simulators)

    def inject(self, provider: str, fault: str, seconds: float) -> None:
        """Make ``provider``'s simulator fail as ``fault`` says (see ``SimulatedProvider.inject``).

        ``ValueError`` for a provider that is not one of these simulators, or an unknown fault.
        """
        simulator = self._simulators.get(provider)
        if simulator is None:
            raise ValueError(
                f"{provider!r} is not one of Baton's simulated providers "
                f"({', '.join(self._simulators)}); faults are injected into those only"
            )
        if fault not in LIVE_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(LIVE_FAULTS)}")
        simulator.inject(fault, seconds)
