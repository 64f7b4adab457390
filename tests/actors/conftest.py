"""Helpers for actor tests: a two-or-more provider config and a stream runner."""

from __future__ import annotations

from typing import Any

import pytest

from actors import Message, config_from_dict, is_terminal, open_baton
from scenarios import FakeProvider, FaultSchedule, answer_tokens
from scenarios._play import client_text

PROMPT = (Message(role="user", content="Tell me about proxies."),)


def make_config(
    names=("a", "b"), *, route: dict[str, Any] | None = None, **provider_overrides: dict[str, Any]
):
    providers = {}
    for name in names:
        table = {"kind": "openai", "base_url": f"http://{name}.invalid/v1"}
        table.update(provider_overrides.get(name, {}))
        providers[name] = table
    targets = [{"provider": name, "model": f"model-{name}"} for name in names]
    return config_from_dict(
        {"providers": providers, "routes": {"default": {"targets": targets, **(route or {})}}}
    )


def healthy_answer(seed: int = 0, messages=PROMPT) -> str:
    return "".join(answer_tokens(messages, seed=seed))


class Run:
    """What a client saw of one stream."""

    def __init__(self, events, statistics):
        self.events = events
        self.statistics = statistics

    @property
    def text(self) -> str:
        return client_text(self.events)

    @property
    def terminal(self):
        return self.events[-1]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def check_shape(self):
        """Invariants every stream must hold: gapless seqs and exactly one terminal, last."""
        assert [e.seq for e in self.events] == list(range(len(self.events)))
        terminals = [e for e in self.events if is_terminal(e)]
        assert len(terminals) == 1 and terminals[0] is self.events[-1]


async def run_stream(baton, *, messages=PROMPT, can_reset=True, **kw) -> Run:
    handle = baton.start_stream(route="default", messages=messages, can_reset=can_reset, **kw)
    events = [event async for event in handle]
    run = Run(events, handle.statistics())
    run.check_shape()
    return run


@pytest.fixture
def fakes():
    def build(**schedules: FaultSchedule | FakeProvider) -> dict[str, FakeProvider]:
        out = {}
        for name, value in schedules.items():
            out[name] = value if isinstance(value, FakeProvider) else FakeProvider(name, value)
        return out

    return build


__all__ = ["PROMPT", "healthy_answer", "make_config", "open_baton", "run_stream"]


class ScriptedProvider:
    """A provider that always streams the same tokens and finishes; records open attempts."""

    kind = "openai"

    def __init__(self, name: str, tokens: list[str]) -> None:
        self.name = name
        self.tokens = tokens
        self.requests = []
        self.open = 0

    async def probe(self, kind):
        return None

    def stream(self, request, *, read_delay=None):
        from contextlib import asynccontextmanager

        import trio

        from actors import Finish, TextDelta, Usage

        @asynccontextmanager
        async def attempt():
            self.requests.append(request)
            self.open += 1
            try:

                async def events():
                    for token in self.tokens:
                        await trio.lowlevel.checkpoint()
                        yield TextDelta(token)
                    yield Finish(
                        reason="stop",
                        usage=Usage(prompt_tokens=1, completion_tokens=len(self.tokens)),
                    )

                yield events()
            finally:
                self.open -= 1

        return attempt()


async def lag_the_loop(clock, step: float = 0.05) -> None:
    """Run until cancelled as a task whose every step takes ``step`` seconds of ``clock``.

    That is how a CPU-bound task looks to the event loop: under ``MockClock`` it makes the
    ``LoadMonitor`` see lag, and so pace reads.
    """
    import trio

    from actors.policy._pace import SAMPLE_INTERVAL

    while True:
        clock.jump(step)
        await trio.sleep(SAMPLE_INTERVAL / 2)
