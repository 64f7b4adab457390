"""``baton serve`` starts without the suites or the benchmark.

The suites import hypothesis (a third of a second, and a test library in a server process)
and the benchmark its load generator; ``scenarios.cli`` imports them only in the subcommands
that run them. Each check runs in a fresh interpreter, where nothing else has imported them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("hypothesis", "scenarios.bench", "scenarios._suites", "scenarios._runner")
REPORT = "import sys; print('loaded:', *sorted(m for m in {heavy!r} if m in sys.modules))"


def loaded_after(code: str) -> list[str]:
    """The modules of ``HEAVY`` that a fresh interpreter has loaded after running ``code``."""
    script = f"{code}\n{REPORT.format(heavy=HEAVY)}"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    (report,) = [line for line in done.stdout.splitlines() if line.startswith("loaded:")]
    return report.split()[1:]


def test_importing_the_cli_loads_neither_hypothesis_nor_the_benchmark() -> None:
    assert loaded_after("import scenarios.cli") == []


def test_parsing_serve_loads_neither_hypothesis_nor_the_benchmark() -> None:
    code = (
        "from scenarios.cli import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert loaded_after(code) == []


@pytest.mark.parametrize(
    ("argv", "loads"),
    [(["scenarios", "list"], "hypothesis"), (["bench", "--help"], "scenarios.bench")],
)
def test_the_other_subcommands_load_what_they_run(argv: list[str], loads: str) -> None:
    code = f"from scenarios.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert loads in loaded_after(code)
