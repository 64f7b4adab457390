"""Fault injection for Baton: fault models, the providers that play them, the suites.

``sim`` holds the providers (an in-memory fake, simulated HTTP servers), ``bench`` the
benchmark and ``cli`` the ``baton`` command; the fault models and the text generator they all
stand on live here at the top.
"""

# The fault models and the text generator first: ``sim`` imports them from this package.
from ._faults import AttemptPlan as AttemptPlan
from ._faults import AttemptRecord as AttemptRecord
from ._faults import Behaviour as Behaviour
from ._faults import FaultSchedule as FaultSchedule
from ._faults import ProbeRecord as ProbeRecord
from ._faults import Rule as Rule
from ._faults import plan_attempt as plan_attempt
from ._textgen import answer_basis as answer_basis
from ._textgen import answer_tokens as answer_tokens
from ._textgen import continuation as continuation
from ._textgen import is_continue_instruction as is_continue_instruction
from .sim import FakeProvider as FakeProvider
from .sim import SimulatedProvider as SimulatedProvider
from .sim import open_simulated_provider as open_simulated_provider
