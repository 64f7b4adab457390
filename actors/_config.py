"""Baton's configuration as frozen attrs objects, and their validation.

``config_from_dict`` turns plain data (what a TOML file parses into) into a ``BatonConfig``
and raises ``ConfigError`` naming the file, the key and what is wrong. Reading the file is the
CLI's job; everything here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal, get_args

import attrs

from ._errors import ConfigError
from ._provider import ProbeKind
from ._vocab import Capability, ToolStreaming

ContinuationMode = Literal["auto", "prefill", "instruct", "replay"]
Strategy = Literal["priority", "weighted", "least_latency"]
ProviderKind = Literal["openai", "anthropic"]

DEFAULT_INSTRUCT_PROMPT = (
    "Your previous reply was cut off. Continue it exactly where it stopped, starting with the "
    "very next character. Do not repeat any of it and do not add any preamble."
)


@attrs.frozen(kw_only=True)
class HealthConfig:
    """Circuit breaker and probe settings for one provider."""

    failure_threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 300.0
    stable_period: float = 60.0  # healthy this long and the cooldown doubling starts over
    half_open_requests: int = 1
    probe_interval: float = 30.0
    probe_interval_unhealthy: float = 5.0
    probe_timeout: float = 5.0
    probe_kind: ProbeKind = "models"
    slow_ttft: float = 5.0
    ttft_alpha: float = 0.3  # EWMA weight of the newest time-to-first-token sample


@attrs.frozen(kw_only=True)
class ProviderConfig:
    """One upstream provider; ``name`` is its key under ``[providers]``."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key_env: str | None = None
    max_connections: int = 10
    pool_timeout: float = 10.0  # longest wait for a free upstream slot
    connect_timeout: float = 5.0
    first_token_timeout: float = 15.0
    idle_timeout: float = 10.0
    # The longest answer (UTF-8 bytes of text, counting what it was asked to continue) and the
    # longest attempt (seconds from the request, waits for a slow client included) this
    # provider may give: a provider that babbles or drips forever is ended as at fault.
    max_answer_bytes: int = 8 * 1024 * 1024
    max_stream_duration: float = 900.0
    retries: int = 1
    max_retry_wait: float = 5.0
    continuation: ContinuationMode = "auto"
    prefill: bool | None = None  # None: true for anthropic, false for openai-compatible
    instruct_prompt: str = DEFAULT_INSTRUCT_PROMPT
    anthropic_version: str = "2023-06-01"
    # What this server can do, where it differs from its kind's API (KIND_CAPABILITIES), e.g.
    # ``supports = {logprobs = false}`` for an OpenAI-compatible server without log probabilities.
    supports: Mapping[Capability, bool] = attrs.field(factory=dict)
    health: HealthConfig = attrs.field(factory=HealthConfig)

    @property
    def honours_prefill(self) -> bool:
        """Whether this provider really continues a trailing assistant message."""
        if self.prefill is not None:
            return self.prefill
        return self.kind == "anthropic"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this provider can serve: its kind's capabilities with ``supports`` applied."""
        base = set(KIND_CAPABILITIES[self.kind])
        for capability, supported in self.supports.items():
            (base.add if supported else base.discard)(capability)
        return frozenset(base)


#: What each kind of API serves. Anthropic's Messages API has no log probabilities and takes
#: no audio input; everything else has a translation (``transport.providers._anthropic``).
KIND_CAPABILITIES: Mapping[ProviderKind, frozenset[Capability]] = {
    "openai": frozenset(get_args(Capability)),
    "anthropic": frozenset(get_args(Capability)) - {"logprobs", "audio"},
}


@attrs.frozen(kw_only=True)
class Target:
    """One place a route can send a request: a provider and the model to ask it for."""

    provider: str
    model: str
    weight: int = 1


@attrs.frozen(kw_only=True)
class RouteConfig:
    """A named, ordered list of targets; clients ask for it as their ``model``."""

    name: str
    targets: tuple[Target, ...]
    strategy: Strategy = "priority"
    max_attempts: int = 4
    hedge_after: float | Literal["auto"] | None = None
    retry_budget: float = 0.2  # retries in flight: at most this share of requests in flight
    min_retry_concurrency: int = 3  # ... or at least this many, however few requests there are
    queue_timeout: float = 10.0
    queue_size: int = 1000
    tool_streaming: ToolStreaming = "atomic"


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int = 8080
    max_request_bytes: int = 4 * 1024 * 1024
    # Client connections each of the HTTP and the WebSocket server holds: more are refused (503).
    max_connections: int = 4096
    max_connections_per_client: int = 256  # from one client address
    body_timeout: float = 30.0  # seconds for a whole HTTP request body; then 408 and closed
    keep_alive_timeout: float = 5.0  # an idle HTTP connection, or an unfinished request head
    handshake_timeout: float = 10.0  # seconds for a WebSocket client's opening handshake
    # A WebSocket connection with no stream running and no frame from its client for this
    # long is closed (1000), so an idle client cannot hold a connection for ever.
    ws_idle_timeout: float = 300.0
    event_log_cap: int = 4096  # events a stream keeps for resuming; older ones are dropped
    # Seconds a stream outlives its client's connection, running, for a resume; then (or
    # this long after it ended) it is cancelled and forgotten. 0: cancelled at the disconnect.
    resume_window: float = 60.0
    # Under load, the longest a stream with text waits between upstream reads, so that each
    # read carries more of the answer (see actors.policy._pace); 0 turns read pacing off.
    max_read_delay: float = 0.25
    # On SIGINT/SIGTERM, how long running streams get to finish before they are ended with
    # ``shutting_down``; new streams are refused meanwhile. 0 ends them at once.
    drain_timeout: float = 30.0
    # Characters of answer text a client may leave unread (the stream log's backlog) before
    # its stream stops reading from the provider until the client catches up (backpressure).
    max_client_backlog: int = 256 * 1024
    # Browser origins (``scheme://host[:port]``) whose pages may use Baton; requests without
    # an Origin header (non-browser clients) and Baton's own HTTP origin are always allowed.
    allowed_origins: tuple[str, ...] = ()
    # PEM files of the certificate (chain) and its private key: both servers then speak TLS
    # (HTTPS, WSS) on their ports. Read at start-up (transport), so a bad file stops it there.
    tls_cert: str | None = None
    tls_key: str | None = None
    # The environment variable holding the bearer key that /status and /metrics then require.
    admin_key_env: str | None = None
    # With admin_port, /status and /metrics are served only on this separate listener (with
    # /healthz and /readyz), on admin_host (default: host); the API ports answer them 404.
    admin_host: str | None = None
    admin_port: int | None = None


@attrs.frozen(kw_only=True)
class ClientConfig:
    """One client allowed to use Baton; ``name`` is its key under ``[clients]``.

    Its key is read from the environment variable ``key_env`` at start-up, or only its
    SHA-256 (hex) is written here as ``key_sha256``. ``routes``: the routes it may use (None:
    all). ``max_streams``, ``requests_per_minute`` and ``tokens_per_minute`` (completion
    tokens) limit it alone (None: no limit).
    ``priority`` is its weight for fair admission to contended upstream slots.
    """

    name: str
    key_env: str | None = None
    key_sha256: str | None = None
    routes: tuple[str, ...] | None = None
    max_streams: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    priority: int = 1


@attrs.frozen(kw_only=True)
class BatonConfig:
    server: ServerConfig = attrs.field(factory=ServerConfig)
    providers: Mapping[str, ProviderConfig] = attrs.field(factory=dict)
    routes: Mapping[str, RouteConfig] = attrs.field(factory=dict)
    # Empty: no client keys; anyone who reaches the ports may use every route.
    clients: Mapping[str, ClientConfig] = attrs.field(factory=dict)


# --- validation -------------------------------------------------------------------------------

_POSITIVE = {
    "cooldown", "max_cooldown", "stable_period", "probe_interval", "probe_interval_unhealthy",
    "probe_timeout", "slow_ttft", "pool_timeout", "connect_timeout", "first_token_timeout",
    "idle_timeout", "queue_timeout", "max_stream_duration",
    "body_timeout", "keep_alive_timeout", "handshake_timeout", "ws_idle_timeout",
}  # fmt: skip
_AT_LEAST_ONE = {
    "failure_threshold", "half_open_requests", "max_connections", "max_attempts", "weight",
    "max_request_bytes", "event_log_cap", "queue_size", "max_answer_bytes", "max_client_backlog",
    "max_connections_per_client", "max_streams", "requests_per_minute", "tokens_per_minute",
    "priority",
}  # fmt: skip
_NON_NEGATIVE = {
    "retries", "max_retry_wait", "retry_budget", "min_retry_concurrency", "max_read_delay",
    "drain_timeout", "resume_window",
}  # fmt: skip
_PORTS = {"ws_port", "http_port", "admin_port"}


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _check_value(where: str, key: str, value: Any, annotation: str) -> Any:
    """Check one scalar against its field's annotation string; return the converted value."""
    literal_choices: list[str] = []
    if "Literal[" in annotation:
        inside = annotation.split("Literal[", 1)[1].split("]", 1)[0]
        literal_choices = [c.strip().strip("\"'") for c in inside.split(",")]
    if annotation in _LITERAL_ALIASES:
        literal_choices = list(_LITERAL_ALIASES[annotation])
    optional = "None" in annotation
    if value is None and optional:
        return None
    if literal_choices and isinstance(value, str):
        if value not in literal_choices:
            raise ConfigError(
                where, f"must be one of {', '.join(map(repr, literal_choices))}, not {value!r}"
            )
        return value
    if "float" in annotation and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(where, "must be a finite number")
    elif annotation.startswith("int"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(where, f"must be an integer, not {_type_name(value)}")
    elif annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, not {_type_name(value)}")
    elif annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(where, f"must be a string, not {_type_name(value)}")
    elif literal_choices:
        raise ConfigError(where, f"must be one of {', '.join(map(repr, literal_choices))}")
    else:
        raise ConfigError(where, f"has the wrong type ({_type_name(value)})")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(where, f"must be greater than 0, not {value}")
    if key in _AT_LEAST_ONE and value < 1:
        raise ConfigError(where, f"must be at least 1, not {value}")
    if key in _NON_NEGATIVE and value < 0:
        raise ConfigError(where, f"must not be negative, not {value}")
    if key in _PORTS and not 0 <= value <= 65535:
        raise ConfigError(where, f"must be a port number from 0 to 65535, not {value}")
    return value


# The choices of each Literal alias a field is annotated with, by the annotation's name.
_LITERAL_ALIASES: dict[str, tuple[str, ...]] = {
    "ContinuationMode": get_args(ContinuationMode),
    "Strategy": get_args(Strategy),
    "ProbeKind": get_args(ProbeKind),
    "ProviderKind": get_args(ProviderKind),
    "ToolStreaming": get_args(ToolStreaming),
}


def _build(
    cls: type, where: str, data: Any, extra: Mapping[str, Any], nested: Mapping[str, Any]
) -> Any:
    """Build an attrs config object from a table, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"must be a table, not {_type_name(data)}")
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs: dict[str, Any] = dict(extra)
    for key, value in data.items():
        key_where = f"{where}.{key}" if where else key
        if key not in fields or key in extra:
            known = ", ".join(sorted(k for k in fields if k not in extra))
            raise ConfigError(key_where, f"unknown key (known keys here: {known})")
        if key in nested:
            kwargs[key] = nested[key](key_where, value)
        else:
            kwargs[key] = _check_value(key_where, key, value, str(fields[key].type))
    return cls(**kwargs)


def _health(where: str, data: Any) -> HealthConfig:
    health: HealthConfig = _build(HealthConfig, where, data, {}, {})
    if health.max_cooldown < health.cooldown:
        raise ConfigError(f"{where}.max_cooldown", "must not be smaller than cooldown")
    return health


def _supports(where: str, data: Any) -> dict[str, bool]:
    choices = get_args(Capability)
    if not isinstance(data, Mapping):
        raise ConfigError(where, "must be a table such as { logprobs = false, vision = true }")
    for key, value in data.items():
        if key not in choices:
            raise ConfigError(
                f"{where}.{key}", f"is not a capability (known: {', '.join(choices)})"
            )
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}", f"must be true or false, not {_type_name(value)}")
    return dict(data)


def _targets(where: str, data: Any) -> tuple[Target, ...]:
    if not isinstance(data, list) or not data:
        raise ConfigError(where, "must be a non-empty list of { provider = ..., model = ... }")
    targets = []
    for i, item in enumerate(data):
        item_where = f"{where}[{i}]"
        target = _build(Target, item_where, item, {}, {})
        targets.append(target)
    return tuple(targets)


def _hedge_after(where: str, value: Any) -> float | str | None:
    if value == "auto":
        return "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ConfigError(where, 'must be a number of seconds greater than 0, or "auto"')


def _origins(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(where, 'must be a list of origins, e.g. ["https://app.example.com"]')
    origins = []
    for i, item in enumerate(value):
        parts = item.split("://", 1) if isinstance(item, str) else []
        if (
            len(parts) != 2
            or parts[0].lower() not in ("http", "https")
            or not parts[1]
            or any(c in parts[1] for c in "/?#@ *")
        ):
            raise ConfigError(
                f"{where}[{i}]",
                f'must be an origin such as "https://app.example.com" or '
                f'"http://localhost:5173" (scheme, host and port only, no path or wildcard), '
                f"not {item!r}",
            )
        origins.append(item.lower())
    return tuple(origins)


def config_from_dict(data: Mapping[str, Any], *, source: str = "") -> BatonConfig:
    """Validate plain data and build a ``BatonConfig``.

    Raises ``ConfigError`` whose ``where`` names ``source`` and the key at fault.
    """
    prefix = f"{source}: " if source else ""

    def where(key: str) -> str:
        return f"{prefix}{key}"

    for key in data:
        if key not in ("server", "providers", "routes", "clients"):
            raise ConfigError(
                where(key), "unknown section (known sections: server, providers, routes, clients)"
            )
    server = _build(
        ServerConfig, where("server"), data.get("server", {}), {}, {"allowed_origins": _origins}
    )
    if (server.tls_cert is None) != (server.tls_key is None):
        given, missing = (
            ("tls_key", "tls_cert") if server.tls_cert is None else ("tls_cert", "tls_key")
        )
        raise ConfigError(
            where(f"server.{missing}"),
            f"is required with server.{given}: give both PEM files, the certificate and its key",
        )
    raw_providers = data.get("providers", {})
    if not isinstance(raw_providers, Mapping):
        raise ConfigError(where("providers"), "must be a table of [providers.NAME] tables")
    providers: dict[str, ProviderConfig] = {}
    for name, table in raw_providers.items():
        pwhere = where(f"providers.{name}")
        if isinstance(table, Mapping):
            for required in ("kind", "base_url"):
                if required not in table:
                    raise ConfigError(f"{pwhere}.{required}", "is required")
        provider = _build(
            ProviderConfig, pwhere, table, {"name": name},
            {"health": _health, "supports": _supports},
        )  # fmt: skip
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{pwhere}.base_url",
                f"must start with http:// or https://, not {provider.base_url!r}",
            )
        if provider.idle_timeout <= server.max_read_delay:
            # A stream paced under load waits up to max_read_delay between reads: that silence
            # must not count as a stalled provider.
            raise ConfigError(
                f"{pwhere}.idle_timeout",
                f"must be longer than server.max_read_delay ({server.max_read_delay:g} s), "
                f"not {provider.idle_timeout:g}",
            )
        providers[name] = provider
    raw_routes = data.get("routes", {})
    if not isinstance(raw_routes, Mapping):
        raise ConfigError(where("routes"), "must be a table of [routes.NAME] tables")
    routes: dict[str, RouteConfig] = {}
    for name, table in raw_routes.items():
        rwhere = where(f"routes.{name}")
        if isinstance(table, Mapping) and "targets" not in table:
            raise ConfigError(f"{rwhere}.targets", "is required")
        route = _build(
            RouteConfig, rwhere, table, {"name": name},
            {"targets": _targets, "hedge_after": _hedge_after},
        )  # fmt: skip
        for i, target in enumerate(route.targets):
            if target.provider not in providers:
                known = ", ".join(sorted(providers)) or "none are configured"
                raise ConfigError(
                    f"{rwhere}.targets[{i}].provider",
                    f"names unknown provider {target.provider!r} (known providers: {known})",
                )
        routes[name] = route
    if not routes:
        raise ConfigError(where("routes"), "at least one route is required, e.g. [routes.default]")
    clients = _clients(where("clients"), data.get("clients", {}), routes)
    return BatonConfig(server=server, providers=providers, routes=routes, clients=clients)


def _clients(where: str, data: Any, routes: Mapping[str, RouteConfig]) -> dict[str, ClientConfig]:
    """The ``[clients.NAME]`` tables: exactly one key source each, only known routes."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, "must be a table of [clients.NAME] tables")
    clients: dict[str, ClientConfig] = {}
    for name, table in data.items():
        cwhere = f"{where}.{name}"
        client: ClientConfig = _build(
            ClientConfig, cwhere, table, {"name": name}, {"routes": partial(_route_names, routes)}
        )
        if (client.key_env is None) == (client.key_sha256 is None):
            raise ConfigError(
                cwhere, 'needs exactly one of key_env = "VAR" or key_sha256 = "<64 hex digits>"'
            )
        digest = client.key_sha256
        if digest is not None and (len(digest) != 64 or not _is_hex(digest)):
            raise ConfigError(
                f"{cwhere}.key_sha256",
                "must be 64 hex digits, the SHA-256 of the key (printf %s KEY | sha256sum)",
            )
        clients[name] = client
    return clients


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _route_names(routes: Mapping[str, RouteConfig], where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, 'must be a list of route names, e.g. ["default"]')
    for i, name in enumerate(value):
        if name not in routes:
            known = ", ".join(sorted(routes))
            raise ConfigError(f"{where}[{i}]", f"names unknown route {name!r} (routes: {known})")
    return tuple(value)
