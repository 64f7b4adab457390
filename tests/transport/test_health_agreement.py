"""``/status``, ``/readyz`` and the metrics say what the router does, in every breaker state.

Under ``MockClock``, provider ``x`` is driven by live traffic into each state. Then, in that
state, the HTTP app (called in-process through ASGI) and a new stream are asked the same
question: does ``x`` take traffic now? ``/status``'s ``usable``, the ``proxy_provider_healthy``
gauge and whether the stream's request reached ``x`` must give one answer; ``proxy_provider_state``
must show the state; and ``/readyz`` must be 503, naming the route, when ``x`` (the only target
of route ``solo``) takes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from actors import Baton, Message, config_from_dict, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule
from transport import MetricsEndpoint
from transport._http import build_app

PROMPT = [Message(role="user", content="Tell me about the harbour.")]
COOLDOWN = 12.0  # not a multiple of the probing interval: the first probe comes 5 s after it
PROBING_INTERVAL = 5.0


class GatedProbes(FakeProvider):
    """A fake provider whose probes wait while ``hold`` is set (an active probe that is out)."""

    def __init__(self, name: str, schedule: FaultSchedule) -> None:
        super().__init__(name, schedule)
        self.hold: trio.Event | None = None

    async def probe(self, kind: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await super().probe(kind)


def config() -> dict[str, Any]:
    health = {
        "failure_threshold": 1, "cooldown": COOLDOWN, "probe_interval": 1000.0,
        "probe_interval_unhealthy": PROBING_INTERVAL, "probe_timeout": 1000.0,
        "slow_ttft": 0.5, "ttft_alpha": 1.0,
    }  # fmt: skip
    return {
        "providers": {
            "x": {"kind": "openai", "base_url": "http://x.invalid/v1", "health": health},
            "y": {"kind": "openai", "base_url": "http://y.invalid/v1"},
        },
        "routes": {
            "pair": {
                "targets": [{"provider": "x", "model": "mx"}, {"provider": "y", "model": "my"}]
            },
            "solo": {"targets": [{"provider": "x", "model": "mx"}]},
        },
    }


async def asgi_get(app: Callable[..., Awaitable[None]], path: str) -> tuple[int, bytes]:
    """GET ``path`` from the ASGI app in-process; the status and the body."""
    messages: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    await app(scope, receive, send)
    return messages[0]["status"], b"".join(m.get("body", b"") for m in messages[1:])


async def finish(baton: Baton, route: str = "solo") -> None:
    """Run one stream on ``route`` to its end, whatever the end."""
    async for _ in baton.start_stream(route=route, messages=PROMPT):
        pass
    await trio.testing.wait_all_tasks_blocked()


async def opened(baton: Baton) -> float:
    """Open ``x``'s breaker with a refused request; when it opened."""
    await finish(baton)
    health = baton.statistics().providers["x"].health
    assert health is not None and health.status == "unhealthy"
    return health.since


async def sleep_until(when: float) -> None:
    await trio.sleep_until(when)
    await trio.testing.wait_all_tasks_blocked()


# Each case: what ``x``'s requests do (by index), then how to bring it into the state.
Setup = Callable[[Baton, GatedProbes, trio.Nursery], Awaitable[None]]


async def stay_healthy(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await finish(baton)


async def slow_first_token(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await finish(baton)  # request 0 stalls 1 s before its first token: slower than slow_ttft


async def open_it(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await opened(baton)
    await trio.sleep(1.0)


async def rest_over(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await sleep_until(await opened(baton) + COOLDOWN + 0.5)  # before the first probe


async def probe_out(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    x.hold = trio.Event()
    at = await opened(baton)
    await sleep_until(at + COOLDOWN + PROBING_INTERVAL + 0.5)  # the first probe is out


async def trial_out(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await sleep_until(await opened(baton) + COOLDOWN + 0.5)
    nursery.start_soon(finish, baton)  # request 1 stalls: a live trial holds the place
    await trio.testing.wait_all_tasks_blocked()


async def trial_failed(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await sleep_until(await opened(baton) + COOLDOWN + 0.5)
    await finish(baton)  # request 1 is refused: the next trial comes a probing interval later


async def limited(baton: Baton, x: GatedProbes, nursery: trio.Nursery) -> None:
    await finish(baton)
    await trio.sleep(1.0)


REFUSE = Behaviour("refuse")
CASES = {
    # name: (x's schedule, setup, breaker state, takes traffic)
    "healthy": (FaultSchedule.healthy(), stay_healthy, "healthy", True),
    "degraded": (
        FaultSchedule.first(1, Behaviour("stall", at_token=0, stall=1.0)),
        slow_first_token,
        "degraded",
        True,
    ),
    "unhealthy": (FaultSchedule.first(1, REFUSE), open_it, "unhealthy", False),
    "probing, a trial place free": (FaultSchedule.first(1, REFUSE), rest_over, "probing", True),
    "probing, the probe is out": (FaultSchedule.first(1, REFUSE), probe_out, "probing", False),
    "probing, a live trial is out": (
        FaultSchedule(
            (
                Rule(REFUSE, last_request=0),
                Rule(Behaviour("stall", at_token=0, stall=1000.0), first_request=1, last_request=1),
            )
        ),
        trial_out,
        "probing",
        False,
    ),
    "probing, the last trial failed": (
        FaultSchedule.first(2, REFUSE),
        trial_failed,
        "probing",
        False,
    ),
    "rate_limited": (
        FaultSchedule.first(1, Behaviour("status", status=429, retry_after=30.0)),
        limited,
        "rate_limited",
        False,
    ),
}


def gauges(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The series of gauge ``name`` in Prometheus text: labels -> value."""
    series = {}
    for line in text.splitlines():
        match = re.fullmatch(name + r"\{(.*)\} (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1))))
            series[labels] = float(match.group(2))
    return series


@pytest.mark.parametrize("case", list(CASES))
async def test_status_readyz_metrics_and_router_agree_on_whether_a_provider_takes_traffic(
    autojump_clock, case: str
) -> None:
    schedule, setup, state, takes = CASES[case]
    x, y = GatedProbes("x", schedule), FakeProvider("y")
    metrics = MetricsEndpoint()
    async with (
        open_baton(
            config_from_dict(config()), {"x": x, "y": y}, meter_provider=metrics.meter_provider
        ) as baton,
        trio.open_nursery() as nursery,
    ):
        app = build_app(baton, metrics=metrics)
        await setup(baton, x, nursery)

        code, body = await asgi_get(app, "/status")
        status = orjson.loads(body)["providers"]["x"]
        ready_code, ready_body = await asgi_get(app, "/readyz")
        ready = orjson.loads(ready_body)
        text = (await asgi_get(app, "/metrics"))[1].decode()
        healthy = gauges(text, "proxy_provider_healthy")[(("provider", "x"),)]
        states = {
            dict(labels)["state"]: value
            for labels, value in gauges(text, "proxy_provider_state").items()
            if dict(labels)["provider"] == "x"
        }

        # Does the router send x a request now? A new stream on x's own route tells.
        asked_before = len(x.log)
        handle = baton.start_stream(route="solo", messages=PROMPT)
        await trio.testing.wait_all_tasks_blocked()
        picked = len(x.log) > asked_before
        handle.cancel()
        if x.hold is not None:
            x.hold.set()
        nursery.cancel_scope.cancel()
    metrics.close()

    assert code == 200 and status["state"] == state
    assert picked is takes
    assert status["usable"] is takes, status
    assert healthy == float(takes)
    assert (status["traffic"] != "none") is takes
    assert states == {
        s: float(s == state)
        for s in ("healthy", "degraded", "unhealthy", "probing", "rate_limited")
    }
    if takes:
        assert (ready_code, ready) == (200, {"status": "ready"})
    else:
        assert ready_code == 503 and ready["status"] == "not_ready"
        assert "'solo'" in ready["reason"] and f"x {state}" in ready["reason"]
