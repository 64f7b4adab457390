"""Fault injection for Baton: fake providers, fault models, suites."""

from ._fake import FakeProvider as FakeProvider
from ._faults import AttemptPlan as AttemptPlan
from ._faults import AttemptRecord as AttemptRecord
from ._faults import Behaviour as Behaviour
from ._faults import FaultSchedule as FaultSchedule
from ._faults import ProbeRecord as ProbeRecord
from ._faults import Rule as Rule
from ._faults import plan_attempt as plan_attempt
from ._simulated import SimulatedProvider as SimulatedProvider
from ._simulated import open_simulated_provider as open_simulated_provider
from ._textgen import answer_basis as answer_basis
from ._textgen import answer_tokens as answer_tokens
from ._textgen import continuation as continuation
from ._textgen import is_continue_instruction as is_continue_instruction
