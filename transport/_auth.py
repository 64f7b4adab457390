"""Client keys at the door: who a request is, which routes it may use, and its limits.

``ClientAuth`` is built once per process from ``[clients]`` (``ClientAuth.from_config``) and
shared by the HTTP and WebSocket servers, so a client's streams and requests are counted
across both and a token issued over HTTP opens a WebSocket.

With no client configured, everything is open, as before client keys existed. Otherwise a
request names itself with a key (``Authorization: Bearer KEY``; on a WebSocket handshake also
the subprotocols ``baton.v1`` + ``baton.key.KEY``), or, on a WebSocket, with a token from
``POST /v1/tokens`` (``?token=``): valid for one connection, ``TOKEN_TTL`` seconds, signed
with HMAC-SHA256 under a secret drawn at start-up, so tokens do not survive a restart.

A client's ``max_streams`` counts its streams from their start to their end, whoever reads
them: one detached for a resume (its connection dropped; it runs on for ``[server]
resume_window`` seconds) still counts, and resuming it counts nothing more. The transports
pass ``partial(auth.release, client)`` as the stream's ``on_end`` (``Baton.start_stream``).

A client's ``tokens_per_minute`` counts the completion tokens its streams sent in the last
minute (``TokenWindow``), as they stream (``TokenMeter``): an estimate per text delta
(``estimate_tokens``), replaced at ``done`` by the provider's count when it reports one. Over
it, new requests are refused until enough tokens leave the window; running streams go on.

Keys are compared as SHA-256 digests with ``hmac.compare_digest``; only digests are kept.
Neither keys nor tokens are ever logged or echoed: errors and logs name the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
import trio

from actors import (
    BatonConfig,
    BatonError,
    ClientConfig,
    ClientEvent,
    ConfigError,
    Delta,
    Done,
    Failover,
    Reasoning,
    RequestErrorCode,
    ToolCall,
    ToolCallPart,
    clip,
)

from ._openai_codec import error_body

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0  # seconds a token from POST /v1/tokens may be used to open a connection
RATE_WINDOW = 60.0  # requests_ and tokens_per_minute count those of the last this many seconds
CHARS_PER_TOKEN = 4  # a streaming delta's estimated tokens, until the provider's count at done
SUBPROTOCOL = "baton.v1"
KEY_SUBPROTOCOL = "baton.key."
CLIENT_API_PATHS = ("/v1/", "/chat/", "/models")
MISSING_KEY = (
    "No API key: send 'Authorization: Bearer YOUR_KEY' (the OpenAI SDKs' api_key); "
    "ask Baton's operator for a key."
)
BAD_KEY = "The API key is not valid for this Baton; check it, or ask Baton's operator for one."
BAD_TOKEN = "The token is not valid or has expired; get a new one from POST /v1/tokens."


class Refused(BatonError):
    """A request refused at the door: ``status`` 401, 404 or 429, an OpenAI-vocabulary ``code``.

    ``retry_after``: seconds after which the same request can succeed (429 only).
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None,
        ws_code: RequestErrorCode = "bad_request",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.ws_code = ws_code  # the code of the WebSocket protocol's error frame

    def body(self) -> bytes:
        """The OpenAI-shaped JSON of the refusal (it never holds the key or token)."""
        return error_body(self.status, self.code, self.message)

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """``Retry-After`` in whole seconds, rounded up, when there is a wait."""
        if self.status == 401:
            return ((b"www-authenticate", b'Bearer realm="baton"'),)
        if self.retry_after is None:
            return ()
        return ((b"retry-after", str(max(1, math.ceil(self.retry_after))).encode()),)


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """One client's streams now, requests and completion tokens in the last minute, refusals
    since start-up."""

    active_streams: int
    recent_requests: int
    recent_tokens: int
    refused: int


class RateWindow:
    """A sliding one-minute window of request times: a pure policy driven by ``now``."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<RateWindow {len(self._times)}/{self.limit} per {self.window:g}s>"

    def count(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times)

    def take(self, now: float) -> float | None:
        """Count a request at ``now``; or, over the limit, return the seconds to wait instead."""
        if self.count(now) >= self.limit:
            return self._times[0] + self.window - now
        self._times.append(now)
        return None


def estimate_tokens(text: str) -> int:
    """The completion tokens a delta's text is counted as while it streams (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@attrs.define
class Spent:
    """Completion tokens counted into a ``TokenWindow`` at ``at`` (``settle`` may rescale)."""

    at: float
    tokens: float


class TokenWindow:
    """A sliding one-minute window of completion tokens: a pure policy driven by ``now``."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._spent: deque[Spent] = deque()

    def __repr__(self) -> str:
        return f"<TokenWindow {len(self._spent)} entries, limit {self.limit} per {self.window:g}s>"

    def count(self, now: float) -> float:
        """The tokens counted in the window that ends at ``now``."""
        while self._spent and self._spent[0].at <= now - self.window:
            self._spent.popleft()
        return sum(s.tokens for s in self._spent)

    def add(self, now: float, tokens: float) -> Spent:
        """Count ``tokens`` at ``now``; the entry, for ``settle``."""
        spent = Spent(at=now, tokens=tokens)
        self._spent.append(spent)
        return spent

    def settle(self, estimates: Sequence[Spent], exact: int, now: float) -> None:
        """Replace ``estimates`` (one stream's, from ``add``) by the provider's ``exact`` count.

        The exact count is spread over the estimates in proportion, so it leaves the window as
        the text it counts streamed; with no estimate it is counted at ``now``.
        """
        estimated = sum(s.tokens for s in estimates)
        if estimated <= 0:
            if exact > 0:
                self.add(now, exact)
            return
        for spent in estimates:
            spent.tokens *= exact / estimated

    def wait(self, now: float) -> float | None:
        """``None`` under the limit; else the seconds until enough tokens leave to be under it."""
        over = self.count(now) - self.limit
        if over < 0:
            return None
        for spent in self._spent:
            over -= spent.tokens
            if over < 0:
                return spent.at + self.window - now
        return self.window  # unreachable with non-negative entries; a safe bound


class TokenMeter:
    """Counts one stream's completion tokens into its client's ``TokenWindow`` as they stream.

    ``see`` each batch of the stream's events: text, reasoning and tool call arguments (whole or
    in parts) add their estimates, since a provider counts all of them as completion tokens; a
    ``Done`` with the provider's usage replaces the estimates of the attempt that finished (its
    usage counts only its own output, so a ``Failover`` starts a new attempt's estimates).
    """

    def __init__(self, window: TokenWindow | None) -> None:
        self._window = window
        self._attempt: list[Spent] = []

    def __repr__(self) -> str:
        return f"<TokenMeter {self._window!r}>"

    def see(self, batch: Iterable[ClientEvent]) -> None:
        """Count a batch of the stream's events (nothing for a client without the limit)."""
        if self._window is None:
            return
        now = trio.current_time()
        for event in batch:
            match event:
                case Delta(text=text) | Reasoning(text=text):
                    self._attempt.append(self._window.add(now, estimate_tokens(text)))
                case ToolCall(name=name, arguments=arguments):
                    self._attempt.append(self._window.add(now, estimate_tokens(name + arguments)))
                case ToolCallPart(name=name, arguments=arguments) if name or arguments:
                    text = (name or "") + arguments
                    self._attempt.append(self._window.add(now, estimate_tokens(text)))
                case Failover():
                    self._attempt = []
                case Done(usage=usage) if usage is not None:
                    self._window.settle(self._attempt, usage.completion_tokens, now)


class _Client:
    """One configured client's digest, routes and counters."""

    def __init__(self, config: ClientConfig, digest: bytes) -> None:
        self.name = config.name
        self.config = config
        self.digest = digest
        self.routes = None if config.routes is None else frozenset(config.routes)
        self.active = 0
        self.refused = 0
        limit = config.requests_per_minute
        self.rate = None if limit is None else RateWindow(limit)
        budget = config.tokens_per_minute
        self.tokens = None if budget is None else TokenWindow(budget)

    def __repr__(self) -> str:
        return f"<client {self.name!r}>"


class Client:
    """Who a request is: a configured client's name, or nobody when keys are off."""

    def __init__(self, entry: _Client | None) -> None:
        self._entry = entry

    @property
    def name(self) -> str | None:
        return None if self._entry is None else self._entry.name

    def __repr__(self) -> str:
        return f"<Client {self.name!r}>"


ANONYMOUS = Client(None)


class ClientAuth:
    """The clients a Baton knows, their tokens and their limits (see the module docstring)."""

    def __init__(
        self, clients: Mapping[str, ClientConfig], digests: Mapping[str, bytes], *,
        token_ttl: float = TOKEN_TTL,
    ) -> None:  # fmt: skip
        self._clients = {name: _Client(c, digests[name]) for name, c in clients.items()}
        self.token_ttl = token_ttl
        self._secret = secrets.token_bytes(32)
        self._used_tokens: dict[str, float] = {}  # nonce -> expiry, for one use per token

    @classmethod
    def from_config(
        cls, config: BatonConfig, *, environ: Mapping[str, str] = os.environ, source: str = "",
        token_ttl: float = TOKEN_TTL,
    ) -> ClientAuth:  # fmt: skip
        """Read each client's key (``key_env``) or digest; ``ConfigError`` if one is unset."""
        digests: dict[str, bytes] = {}
        for name, client in config.clients.items():
            if client.key_env is not None:
                key = environ.get(client.key_env)
                if not key:
                    where = f"{source}: clients.{name}.key_env" if source else f"clients.{name}"
                    raise ConfigError(
                        where, f"the environment variable {client.key_env} is not set; export "
                        "the client's key in it, or write key_sha256 instead",
                    )  # fmt: skip
                digests[name] = _digest(key)
            else:
                assert client.key_sha256 is not None
                digests[name] = bytes.fromhex(client.key_sha256)
        return cls(config.clients, digests, token_ttl=token_ttl)

    @property
    def enabled(self) -> bool:
        """Whether keys are required (any client is configured)."""
        return bool(self._clients)

    def __repr__(self) -> str:
        return f"<ClientAuth clients={sorted(self._clients)}>"

    # --- who ---------------------------------------------------------------------------------

    def identify(self, key: str | None) -> Client:
        """The client whose key this is; ``Refused`` 401 for a missing or unknown key."""
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise Refused(401, "invalid_api_key", MISSING_KEY)
        digest = _digest(key)
        found: _Client | None = None
        for client in self._clients.values():  # no early exit: the time names no client
            if hmac.compare_digest(digest, client.digest):
                found = client
        if found is None:
            log.info("refused a request with an unknown API key")
            raise Refused(401, "invalid_api_key", BAD_KEY)
        return Client(found)

    def http_door(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Client:
        """Who sends an HTTP request: its ``Authorization: Bearer KEY`` on the client API.

        The operator endpoints (``/healthz``, ``/readyz``, ``/status``, ``/metrics``) are not
        the client API and are let through as anonymous.
        """
        if not path.startswith(CLIENT_API_PATHS):
            return ANONYMOUS
        return self.identify(bearer(headers))

    def status(self) -> dict[str, Any]:
        """The ``clients`` part of ``/status``: counters by client name."""
        return {name: attrs.asdict(s) for name, s in self.statistics().items()}

    def handshake(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], subprotocols: Iterable[str]
    ) -> tuple[Client, str | None]:
        """Who opens a WebSocket, and the subprotocol to answer (``baton.v1`` or none).

        The key comes from ``Authorization``, the subprotocol ``baton.key.KEY`` (offered with
        ``baton.v1``, which alone is answered), or a ``?token=``; ``Refused`` 401 otherwise.
        """
        offered = list(subprotocols)
        answer = SUBPROTOCOL if SUBPROTOCOL in offered else None
        if not self.enabled:
            return ANONYMOUS, answer
        token = parse_qs(urlsplit(path).query).get("token")
        if token:
            return self.redeem_token(token[0]), answer
        key = bearer(headers)
        if key is None:
            in_protocol = [p for p in offered if p.startswith(KEY_SUBPROTOCOL)]
            if in_protocol:
                key = in_protocol[0].removeprefix(KEY_SUBPROTOCOL)
        return self.identify(key), answer

    def issue_token(self, client: Client) -> bytes:
        """``POST /v1/tokens``: the JSON of a token opening one connection as ``client``."""
        if client._entry is None:
            raise Refused(404, "not_found", "Tokens are only issued when client keys are set.")
        expires = trio.current_time() + self.token_ttl
        payload = orjson.dumps([client.name, expires, secrets.token_urlsafe(12)])
        body = _b64(payload) + "." + _b64(self._sign(payload))
        log.info("issued a token to client %s", client.name)
        return orjson.dumps({"token": body, "expires_in": self.token_ttl, "client": client.name})

    def redeem_token(self, token: str) -> Client:
        """The client of a valid, unexpired, unused token; ``Refused`` 401 otherwise."""
        refused = Refused(401, "invalid_api_key", BAD_TOKEN)
        try:
            encoded, signature = token.split(".", 1)
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                raise refused
            name, expires, nonce = orjson.loads(payload)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise refused from None
        now = trio.current_time()
        self._used_tokens = {n: t for n, t in self._used_tokens.items() if t > now}
        client = self._clients.get(name)
        if client is None or expires <= now or nonce in self._used_tokens:
            log.info("refused an expired or used token of client %s", clip(name))
            raise refused
        self._used_tokens[nonce] = expires
        return Client(client)

    # --- what it may do ----------------------------------------------------------------------

    def routes(self, client: Client, all_routes: Iterable[str]) -> list[str]:
        """The routes ``client`` may use, of ``all_routes`` (in their order)."""
        entry = client._entry
        return [r for r in all_routes if entry is None or entry.routes is None or r in entry.routes]

    def check_route(self, client: Client, route: str) -> None:
        """``Refused`` 404 ``model_not_found`` if ``client`` may not use ``route``, as if absent."""
        entry = client._entry
        if entry is not None and entry.routes is not None and route not in entry.routes:
            known = ", ".join(sorted(entry.routes))
            raise Refused(
                404, "model_not_found", f"Unknown model {clip(route)}; this Baton serves: {known}.",
                ws_code="unknown_model",
            )  # fmt: skip

    def admit(self, client: Client, route: str) -> Client:
        """Count a new stream of ``client`` on ``route``; returns ``client``.

        ``Refused`` 404 if it may not use ``route`` (as if it did not exist), 429 over its
        limits; then nothing is counted. Every admitted stream is ``release``d once, when it
        ends (its ``on_end``), or at once if it could not start; a resume is not admitted.
        """
        self.check_route(client, route)
        entry = client._entry
        if entry is None:
            return client
        limit = entry.config.max_streams
        if limit is not None and entry.active >= limit:
            entry.refused += 1
            raise Refused(
                429, "too_many_streams",
                f"Client {entry.name} already runs {entry.active} streams, its max_streams; "
                "wait for one to end.", retry_after=1.0, ws_code="too_many_streams",
            )  # fmt: skip
        if entry.tokens is not None:  # before the request is counted: a refusal is not one
            wait = entry.tokens.wait(trio.current_time())
            if wait is not None:
                entry.refused += 1
                raise Refused(
                    429, "rate_limit_exceeded",
                    f"Client {entry.name} used its {entry.tokens.limit} completion tokens of the "
                    f"last minute (tokens_per_minute); retry in {math.ceil(wait)} s.",
                    retry_after=wait, ws_code="rate_limit_exceeded",
                )  # fmt: skip
        if entry.rate is not None:
            wait = entry.rate.take(trio.current_time())
            if wait is not None:
                entry.refused += 1
                raise Refused(
                    429, "rate_limit_exceeded",
                    f"Client {entry.name} sent its {entry.rate.limit} requests of the last "
                    f"minute (requests_per_minute); retry in {math.ceil(wait)} s.",
                    retry_after=wait, ws_code="rate_limit_exceeded",
                )  # fmt: skip
        entry.active += 1
        return client

    def meter(self, client: Client) -> TokenMeter:
        """The ``TokenMeter`` of a new stream of ``client`` (it counts nothing without a limit)."""
        return TokenMeter(None if client._entry is None else client._entry.tokens)

    def release(self, client: Client) -> None:
        """A stream ``admit`` counted has ended (or could not start); call it once per admit."""
        if client._entry is not None:
            client._entry.active -= 1

    def statistics(self) -> dict[str, ClientStatistics]:
        """Each client's counters, by name (never its key)."""
        now = trio.current_time()
        return {
            name: ClientStatistics(
                active_streams=c.active,
                recent_requests=0 if c.rate is None else c.rate.count(now),
                recent_tokens=0 if c.tokens is None else round(c.tokens.count(now)),
                refused=c.refused,
            )
            for name, c in self._clients.items()
        }

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()


def client_auth(config: BatonConfig, *, environ: Mapping[str, str] = os.environ) -> ClientAuth:
    """The process's ``ClientAuth``; warns once when it serves beyond loopback without keys."""
    auth = ClientAuth.from_config(config, environ=environ)
    if not auth.enabled and not _is_loopback(config.server.host):
        log.warning(
            "listening on %s without [clients]: anyone who reaches Baton's ports can spend the "
            "provider keys behind it; add [clients.NAME] tables with keys",
            config.server.host,
        )
    return auth


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return key.strip()
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
