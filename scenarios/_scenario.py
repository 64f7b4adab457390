"""A scenario: the fault model per provider, the client model, and the config they run against.

A ``Scenario`` is everything one run of a suite needs, and nothing else, so that a failing run
can be replayed from a one-line blob (``Scenario.to_blob``, base64 of compact JSON, the same
approach as ``FaultSchedule.to_blob``):

- ``providers``: per provider name, its API kind and its ``FaultSchedule``;
- ``clients``: the streams, each a ``ClientSpec`` (when it starts, how slowly it reads, when it
  disconnects, whether it can take a ``reset``); client ``i`` asks ``client_prompt(i)``, so its
  answer is known in advance (``Scenario.plan``); what it ``asks`` for beyond text (tools,
  JSON, reasoning) is in ``client_params(i, asks)``;
- ``provider_settings`` / ``route_settings``: the suite's configuration knobs, laid over the
  suite's defaults (a scenario drawn against the user's ``--config`` has none: that file is
  the configuration);
- ``seed``/``words``: which deterministic answers the fakes give.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from actors import BatonConfig, Message, config_from_dict

from ._faults import HEALTHY, AttemptPlan, FaultSchedule, _short_repr, plan_attempt

BLOB_VERSION = 1
_TOPICS = (
    "Explain failover.",
    "Café ☕ — naïve question: what is a proxy?",
    "Tell me about harbours.",
    "Why do streams break?",
)


def client_prompt(index: int) -> tuple[Message, ...]:
    """The conversation client ``index`` sends; unique per client, so attempts can be traced."""
    return (Message(role="user", content=f"Client {index}: {_TOPICS[index % len(_TOPICS)]}"),)


#: What a client may ask for beyond plain text (``ClientSpec.asks``).
ASKS = ("text", "tools", "json", "reasoning")
CLIENT_TOOLS: tuple[Mapping[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "detail": {
                        "type": "object",
                        "properties": {"hourly": {"type": "boolean"}},
                        "required": ["hourly"],
                    },
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"],
            },
        },
    },
)
CLIENT_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["title", "steps", "confidence"],
    "additionalProperties": False,
}


def client_params(index: int, asks: str) -> dict[str, Any]:
    """The request parameters client ``index`` sends when it ``asks`` for tools, JSON or
    reasoning (they vary with the index: one tool or two, json_object or a strict schema)."""
    if asks == "tools":
        tools = list(CLIENT_TOOLS[: 1 + index % 2])
        params: dict[str, Any] = {"tools": tools}
        if index % 3 == 2:
            params["parallel_tool_calls"] = False
        return params
    if asks == "json":
        if index % 2:
            return {"response_format": {"type": "json_object"}}
        spec = {"name": "plan", "schema": dict(CLIENT_JSON_SCHEMA), "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if asks == "reasoning":
        return {"reasoning_effort": ("low", "medium", "high")[index % 3]}
    return {}


def client_of(messages: tuple[Message, ...] | list[Message]) -> int | None:
    """Which client sent a conversation (by its ``client_prompt``), or None."""
    for message in messages:
        if message.role == "user" and message.text.startswith("Client "):
            head = message.text[len("Client ") :].split(":", 1)[0]
            if head.isdigit():
                return int(head)
    return None


@attrs.frozen(kw_only=True, repr=False)
class ClientSpec:
    """One client stream: when it starts, how it reads, whether it leaves early.

    ``cancel_at_token``: the client disconnects once its text holds that many answer tokens
    (0: right after starting; None: never). ``read_delay``: a slow reader sleeps this long
    between reads (the stream's log merges the deltas it falls behind on). ``asks``: one of
    ``ASKS``, what the request asks for beyond text (``client_params``).

    A client whose network drops (``drop_at_event``, None: never): once it holds that many
    events its connection goes (events of the same batch beyond them are lost on the way), the
    proxy is told (``Baton.detach``), and ``away`` seconds later it resumes (``Baton.resume``)
    with ``after`` = the last seq it holds minus ``stale`` (a client that lost track of its
    position), dropping the replayed events it already holds. It drops up to ``drops`` times,
    every ``drop_at_event`` events. Away longer than the resume window, it is told
    ``unknown_stream`` and gives up.
    """

    start_at: float = 0.0
    route: str = "default"
    cancel_at_token: int | None = None
    read_delay: float = 0.0
    can_reset: bool = True
    asks: str = "text"
    drop_at_event: int | None = None
    away: float = 0.0
    stale: int = 0
    drops: int = 1

    def __repr__(self) -> str:
        return _short_repr(self, ())

    def to_dict(self) -> dict[str, Any]:
        return _non_defaults(self)


@attrs.frozen(kw_only=True, repr=False)
class ProviderSpec:
    """One provider of a scenario: its name in the config, its API kind and its faults."""

    name: str
    kind: str = "openai"
    schedule: FaultSchedule = attrs.field(factory=FaultSchedule)

    def __repr__(self) -> str:
        return _short_repr(self, ("name",))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProviderSpec:
        schedule = FaultSchedule.from_dict(data.get("schedule", {}))
        return cls(name=data["name"], kind=data.get("kind", "openai"), schedule=schedule)


def _as_tuple(items: Any) -> tuple[Any, ...]:
    return tuple(items)


def _as_dict(items: Any) -> dict[str, Any]:
    return dict(items)


@attrs.frozen(kw_only=True, repr=False)
class Scenario:
    """One run of a suite: providers with their faults, clients, and the config knobs."""

    suite: str
    providers: tuple[ProviderSpec, ...] = attrs.field(converter=_as_tuple)
    clients: tuple[ClientSpec, ...] = attrs.field(converter=_as_tuple)
    provider_settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    route_settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    user_config: bool = False  # drawn against a --config file rather than the suite's own
    seed: int = 0
    words: str = "plain"

    def __repr__(self) -> str:
        parts = [
            f"suite={self.suite!r}",
            f"providers={self.providers!r}",
            f"clients={self.clients!r}",
        ]
        for name in ("provider_settings", "route_settings"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)!r}")
        for field in ("user_config", "seed", "words"):
            value = getattr(self, field)
            if value != attrs.fields_dict(Scenario)[field].default:
                parts.append(f"{field}={value!r}")
        return f"Scenario({', '.join(parts)})"

    def schedule(self, provider: str) -> FaultSchedule:
        for spec in self.providers:
            if spec.name == provider:
                return spec.schedule
        return FaultSchedule()

    def params(self, client: int) -> dict[str, Any]:
        """The request parameters client ``client`` sends."""
        asks = self.clients[client].asks if client < len(self.clients) else "text"
        return client_params(client, asks)

    def plan(self, client: int) -> AttemptPlan:
        """What a healthy provider answers client ``client``: its pieces, text and tool calls."""
        return plan_attempt(
            HEALTHY,
            client_prompt(client),
            seed=self.seed,
            words=self.words,  # type: ignore[arg-type]
            params=self.params(client),
        )

    def answer(self, client: int) -> list[str]:
        """The tokens of client ``client``'s deterministic answer text (none for tool calls)."""
        return list(self.plan(client).tokens)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": BLOB_VERSION,
            "suite": self.suite,
            "providers": [p.to_dict() for p in self.providers],
            "clients": [c.to_dict() for c in self.clients],
        }
        if self.provider_settings:
            out["provider_settings"] = dict(self.provider_settings)
        if self.route_settings:
            out["route_settings"] = dict(self.route_settings)
        if self.user_config:
            out["user_config"] = True
        if self.seed:
            out["seed"] = self.seed
        if self.words != "plain":
            out["words"] = self.words
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        if data.get("v") != BLOB_VERSION:
            raise ValueError(f"unsupported scenario blob version {data.get('v')!r}")
        return cls(
            suite=data["suite"],
            providers=[ProviderSpec.from_dict(p) for p in data["providers"]],
            clients=[ClientSpec(**c) for c in data["clients"]],
            provider_settings=data.get("provider_settings", {}),
            route_settings=data.get("route_settings", {}),
            user_config=data.get("user_config", False),
            seed=data.get("seed", 0),
            words=data.get("words", "plain"),
        )

    def to_blob(self) -> str:
        """A compact, URL- and shell-safe string that ``from_blob`` reads back."""
        return base64.urlsafe_b64encode(orjson.dumps(self.to_dict())).decode().rstrip("=")

    @classmethod
    def from_blob(cls, blob: str) -> Scenario:
        """Read a scenario written by ``to_blob``; raises ``ValueError`` if it is not one."""
        text = blob.strip()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return cls.from_dict(orjson.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a scenario blob: {exc}") from None


def _non_defaults(obj: Any) -> dict[str, Any]:
    return {
        f.name: getattr(obj, f.name)
        for f in attrs.fields(type(obj))
        if getattr(obj, f.name) != f.default
    }


# --- the configuration a scenario runs against --------------------------------------------------

# The suites' own configuration: short timeouts so a run exercises them often (MockClock makes
# them free), and enough attempts for every target of a route to get its retry.
SUITE_PROVIDER_DEFAULTS: Mapping[str, Any] = {
    "first_token_timeout": 5.0,
    "idle_timeout": 4.0,
    "pool_timeout": 10.0,
    "retries": 1,
    "max_retry_wait": 5.0,
}
PROVIDER_NAMES = ("primary", "backup", "spare")


def scenario_config(scenario: Scenario, user_config: BatonConfig | None = None) -> BatonConfig:
    """The ``BatonConfig`` a scenario runs against.

    A scenario drawn against a user's config runs against that config unchanged (pass it);
    otherwise the suite's config is built from the scenario's providers (in order, one route
    ``default`` over all of them) and knobs.
    """
    if scenario.user_config:
        if user_config is None:
            raise ValueError(
                "this scenario was drawn against a --config file; pass the same file to replay it"
            )
        missing = [p.name for p in scenario.providers if p.name not in user_config.providers]
        if missing:
            raise ValueError(f"the config has no provider {', '.join(missing)} this scenario names")
        return user_config
    settings = dict(scenario.provider_settings)
    health = settings.pop("health", {})
    providers = {
        p.name: {
            "kind": p.kind,
            "base_url": f"http://{p.name}.invalid/v1",
            **SUITE_PROVIDER_DEFAULTS,
            **settings,
            "health": dict(health),
        }
        for p in scenario.providers
    }
    targets = [{"provider": p.name, "model": f"model-{p.name}"} for p in scenario.providers]
    route = {"targets": targets, "max_attempts": 2 * len(targets), **scenario.route_settings}
    return config_from_dict(
        {"providers": providers, "routes": {"default": route}}, source="scenario"
    )
