"""The benchmark behind ``baton bench``: Baton against a fast local mock and a bare stack.

``run_bench`` starts the mock, Baton and a bare pass-through proxy in their own processes
(``python -m scenarios.bench._mock``, ``._proxy``, ``._passthrough``), drives the workloads
and returns a ``BenchRun``; ``format_report`` and ``summarize`` turn it into tables.
"""

from ._procs import proc_available as proc_available
from ._profile import Profile as Profile
from ._profile import format_profile as format_profile
from ._profile import hot_spots as hot_spots
from ._profile import py_spy_available as py_spy_available
from ._report import Row as Row
from ._report import against_passthrough as against_passthrough
from ._report import format_report as format_report
from ._report import summarize as summarize
from ._report import to_json as to_json
from ._run import BenchRun as BenchRun
from ._run import Measurement as Measurement
from ._run import run_bench as run_bench
from ._settings import DEFAULT as DEFAULT
from ._settings import QUICK as QUICK
from ._settings import TARGETS as TARGETS
from ._settings import WORKLOADS as WORKLOADS
from ._settings import BenchSettings as BenchSettings
