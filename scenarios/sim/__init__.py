"""Providers that play faults: an in-memory fake and simulated OpenAI/Anthropic HTTP servers.

Both follow a ``FaultSchedule`` (``scenarios``'s fault models) and answer with its text
generator, so a suite can run the same scenario in memory or over real sockets.
"""

from ._fake import FakeProvider as FakeProvider
from ._live import SimulatorFaults as SimulatorFaults
from ._simulated import SimulatedProvider as SimulatedProvider
from ._simulated import open_simulated_provider as open_simulated_provider
