"""What both adapters share as objects: the clients, the key, streaming, probing and closing.

A subclass names its URLs and headers, builds its request body, and supplies the parser for
its event format; ``HTTPProvider`` does the rest the same way for every provider.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from actors import ProbeKind, ProviderConfig

from ._http import (
    Clients,
    EventParser,
    UpstreamEvents,
    check,
    client_timeout,
    open_event_stream,
)

logger = logging.getLogger(__name__)


class HTTPProvider:
    """The shared half of an adapter: its httpx clients, one key, one probe model.

    Pass ``client`` to share or mock the HTTP client (the provider then leaves closing it to
    you). ``headers`` carry the key; they are sent, never logged, and ``repr`` leaves them out.
    ``probe_model`` is the model a ``chat`` probe asks; without it a ``chat`` probe lists models.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        client: httpx.AsyncClient | None,
        api_key: str | None,
        probe_model: str | None,
        headers: Mapping[str, str],
        stream_url: str,
        models_url: str,
    ) -> None:
        self._config = config
        self._owns_client = client is None
        self._clients = (
            Clients.for_provider(config)
            if client is None
            else Clients([client], [config.max_connections])
        )
        self._api_key = api_key or None
        self._probe_model = probe_model
        self._headers = dict(headers)
        # Parsed once: httpx parses a URL string again for every request.
        self._stream_url = httpx.URL(stream_url)
        self._models_url = httpx.URL(models_url)
        # Set per request as well, so that a shared or mocked client still never times reads.
        self._timeout = client_timeout(config)
        self._warned_probe = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._config.name!r} {self._config.base_url}>"

    @property
    def name(self) -> str:
        """The provider's name in the configuration."""
        return self._config.name

    @property
    def config(self) -> ProviderConfig:
        """The configuration this provider was built from."""
        return self._config

    def _post(self, url: httpx.URL, body: Mapping[str, Any], *, stream: bool) -> httpx.Request:
        headers = {**self._headers, "accept": "text/event-stream"} if stream else self._headers
        return self._clients.first.build_request(
            "POST", url, content=orjson.dumps(body), headers=headers, timeout=self._timeout
        )

    @asynccontextmanager
    async def _open_stream(
        self,
        body: Mapping[str, Any],
        parser: EventParser,
        read_delay: Callable[[], float] | None,
    ) -> AsyncIterator[UpstreamEvents]:
        """Post ``body`` to the streaming endpoint and yield its events (see ``Provider``)."""
        logger.debug(
            "provider %s: POST %s model=%s", self.name, self._stream_url, body.get("model")
        )
        request = self._post(self._stream_url, body, stream=True)
        with self._clients.lease() as client:
            async with open_event_stream(
                client, request, parser,
                provider=self.name, secret=self._api_key, read_delay=read_delay,
            ) as events:  # fmt: skip
                yield events

    def _probe_body(self, model: str) -> dict[str, Any]:
        """The body of a one-token, non-streaming request for ``model``."""
        raise NotImplementedError

    async def probe(self, kind: ProbeKind) -> None:
        """Check the provider: ``models`` lists models, ``chat`` asks for one token.

        Raises ``UpstreamError`` when it is not well, with the HTTP status as answered: a 404,
        405 or 501 tells the health actor that the endpoint does not exist, not that the
        provider is down (it then probes with ``chat``). No deadline of its own: the health
        actor puts one around it.
        """
        if kind == "chat" and self._probe_model is None and not self._warned_probe:
            self._warned_probe = True
            logger.warning(
                "provider %s: a chat probe needs a probe model; listing models instead",
                self.name,
            )
        if kind == "chat" and self._probe_model is not None:
            request = self._post(
                self._stream_url, self._probe_body(self._probe_model), stream=False
            )
        else:
            request = self._clients.first.build_request(
                "GET", self._models_url, headers=self._headers, timeout=self._timeout
            )
        with self._clients.lease() as client:
            await check(client, request, provider=self.name, secret=self._api_key)

    async def aclose(self) -> None:
        """Close the HTTP clients if this provider created them."""
        if self._owns_client:
            await self._clients.aclose()
