"""The ``baton`` command (``serve``, ``scenarios``, ``bench``), at the top of the import graph.

Importing it loads what ``baton serve`` needs and nothing more: the suites and the benchmark
are imported only by the subcommands that run them.
"""

from ._main import bench_main as bench_main
from ._main import main as main
from ._serve import default_config as default_config
