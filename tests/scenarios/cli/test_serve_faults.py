"""The embedded default (``baton serve`` with no config) has fault buttons; a config has none.

In process, on real loopback sockets: ``serve_default`` runs Baton over its two simulators, the
test presses ``POST /sim/faults/...`` as the page does and sees the route fail over.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from scenarios.cli import _serve
from scenarios.sim import SimulatorFaults
from transport import load_config

from .test_serve_command import CONFIG, free_port

ASK = {"model": "default", "messages": [{"role": "user", "content": "Hello?"}]}


class Spy:
    """Stands in for ``run_baton``: runs the real one without signals, keeps its ports and
    ``faults``."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[dict[str, Any]] = []
        self.listening = trio.Event()
        self.ports = (0, 0)

    async def __call__(self, config: Any, providers: Any, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        task_status = kwargs.pop("task_status", trio.TASK_STATUS_IGNORED)
        kwargs["handle_signals"] = False  # a test is no place for a signal handler
        real = functools.partial(self.real, config, providers, **kwargs)
        async with trio.open_nursery() as nursery:
            self.ports = await nursery.start(real)
            task_status.started(self.ports)
            self.listening.set()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(_serve.run_baton)
    monkeypatch.setattr(_serve, "run_baton", spy)
    return spy


async def test_the_embedded_default_breaks_its_own_simulators_on_request(spy: Spy) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve.serve_default, "127.0.0.1", 0, 0)
        with trio.fail_after(10):
            await spy.listening.wait()
        [call] = spy.calls
        assert isinstance(call["faults"], SimulatorFaults)
        base = f"http://127.0.0.1:{spy.ports[1]}"
        async with httpx.AsyncClient(verify=False, timeout=10) as http:
            listed = (await http.get(f"{base}/sim/faults")).json()
            assert [p["provider"] for p in listed] == ["sim-openai", "sim-anthropic"]
            first = (await http.post(f"{base}/v1/chat/completions", json=ASK)).json()
            assert first["model"] == "sim-gpt"  # the route's first target answers
            pressed = await http.post(
                f"{base}/sim/faults/sim-openai", json={"fault": "status503", "seconds": 30}
            )
            assert pressed.status_code == 204
            second = await http.post(f"{base}/v1/chat/completions", json=ASK)
            assert second.status_code == 200 and second.json()["model"] == "sim-claude"
            assert (
                second.json()["choices"][0]["message"]["content"]
                == (first["choices"][0]["message"]["content"])
            )
        nursery.cancel_scope.cancel()


async def test_a_config_file_gets_no_fault_endpoint(spy: Spy, tmp_path: Path) -> None:
    path = tmp_path / "baton.toml"
    path.write_text(CONFIG.format(http=free_port(), ws=free_port()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve._start, load_config(str(path)))
        with trio.fail_after(10):
            await spy.listening.wait()
        assert spy.calls[0].get("faults") is None
        async with httpx.AsyncClient(verify=False, timeout=10) as http:
            missing = await http.get(f"http://127.0.0.1:{spy.ports[1]}/sim/faults")
        assert missing.status_code == 404
        nursery.cancel_scope.cancel()
