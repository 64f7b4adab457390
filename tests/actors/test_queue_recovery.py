"""Streams that wait out a total outage are all served when the provider recovers.

When the only provider of a route recovers, its breaker first admits one half-open trial; the
streams waiting in the outage queue wake together and all pick it, but only one gets the trial
place. The others must go back to waiting for the breaker to close, not fail.
"""

from __future__ import annotations

import trio

from actors import Done, config_from_dict, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule

from .conftest import PROMPT


def one_provider_config(**health):
    return config_from_dict(
        {
            "providers": {
                "a": {
                    "kind": "openai",
                    "base_url": "http://a.invalid/v1",
                    "retries": 0,
                    "health": {
                        "failure_threshold": 1, "cooldown": 2.0, "half_open_requests": 1,
                        "probe_interval_unhealthy": 100.0, "probe_kind": "chat", **health,
                    },
                }
            },
            "routes": {"r": {"targets": [{"provider": "a", "model": "m"}], "queue_timeout": 30.0}},
        }
    )  # fmt: skip


async def test_every_stream_queued_through_an_outage_is_served_when_it_ends(autojump_clock):
    outage = FaultSchedule((Rule(Behaviour("status", status=503), start=0.0, end=1.5),))
    provider = FakeProvider("a", outage)
    ends = []
    async with open_baton(one_provider_config(), {"a": provider}) as baton:

        async def stream() -> None:
            handle = baton.start_stream(route="r", messages=PROMPT)
            ends.append([e async for e in handle][-1])

        # The first request opens the breaker; the others come during the outage and wait.
        first = baton.start_stream(route="r", messages=PROMPT)
        assert not isinstance([e async for e in first][-1], Done)
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(stream)
                await trio.sleep(0.2)
    failed = [f"{e.code}: {e.message}" for e in ends if not isinstance(e, Done)]
    assert len(ends) == 12 and failed == [], failed
