"""The benchmark's helper processes start under their module names and say nothing on stderr.

``run_bench`` starts them with ``python -m scenarios.bench._mock`` (and ``._proxy``,
``._passthrough``) and counts every line they write to stderr as a sign of trouble, so a stale
module path, or runpy's warning about a module the package already imported, would spoil every
report. Real processes on 127.0.0.1, no clock tricks.
"""

from __future__ import annotations

from pathlib import Path

from scenarios.bench import QUICK
from scenarios.bench._procs import open_child
from scenarios.bench._settings import proxy_config, workloads_of


async def test_the_mock_baton_and_the_pass_through_start_and_stop_quietly(tmp_path: Path) -> None:
    with (tmp_path / "children.log").open("w+b") as logs:
        async with open_child("scenarios.bench._mock", [], stderr=logs) as mock:
            config = tmp_path / "baton.toml"
            workloads = list(workloads_of(QUICK).values())
            config.write_text(proxy_config(mock.info["port"], workloads, max_connections=8))
            async with open_child("scenarios.bench._proxy", [str(config)], stderr=logs) as proxy:
                assert {"ws_port", "http_port"} <= set(proxy.info)
            async with open_child(
                "scenarios.bench._passthrough", [str(config)], stderr=logs
            ) as passthrough:
                assert "http_port" in passthrough.info
        logs.seek(0)
        assert logs.read().decode(errors="replace") == ""
