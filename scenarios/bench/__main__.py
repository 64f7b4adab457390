"""``python -m scenarios.bench``: ``baton bench`` under the package's name."""

import sys

from scenarios.cli import bench_main

sys.exit(bench_main())
