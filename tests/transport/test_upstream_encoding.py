"""A provider's answer is never inflated in Baton's memory: Baton asks for ``identity``.

A gzip body that expands 1,000x would otherwise be decoded whole, one network read at a time.
Baton asks every upstream for an uncompressed answer and refuses a compressed one, unread, as
a protocol fault of that provider (which the failover rules then handle).
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from actors import FailureKind, Message, ProviderConfig, UpstreamError, UpstreamRequest
from transport.providers import OpenAIProvider

BOMB = gzip.compress(b"data: " + b"x" * 50_000_000 + b"\n\n")  # ~50 KB that inflate to 50 MB
REQUEST = UpstreamRequest(model="m", messages=(Message(role="user", content="Hi"),), params={})


class CountingStream(httpx.AsyncByteStream):
    """A response body that counts how many of its bytes were read."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), 4096):
            await trio.lowlevel.checkpoint()
            piece = self.body[start : start + 4096]
            self.read += len(piece)
            yield piece

    async def aclose(self) -> None:
        pass


def provider_answering(
    status: int, body: CountingStream, seen: list[httpx.Request]
) -> OpenAIProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(status, headers=headers, stream=body)

    config = ProviderConfig(name="oai", kind="openai", base_url="https://api.example.test/v1")
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider(config, client=client, api_key="sk-test", probe_model="m")


@pytest.mark.parametrize("status", [200, 500])
async def test_a_compressed_answer_is_refused_unread(status: int) -> None:
    body, seen = CountingStream(BOMB), []
    provider = provider_answering(status, body, seen)
    with pytest.raises(UpstreamError) as caught:
        async with provider.stream(REQUEST) as events:
            async for _ in events:
                pass
    assert [request.headers["accept-encoding"] for request in seen] == ["identity"]
    failure = caught.value.failure
    assert failure.kind is FailureKind.PROTOCOL
    assert "Content-Encoding 'gzip'" in failure.message
    assert body.read == 0


async def test_probes_ask_for_identity_too() -> None:
    body, seen = CountingStream(b'{"data": []}'), []
    provider = provider_answering(200, body, seen)
    with pytest.raises(UpstreamError):
        await provider.probe("models")
    assert seen[0].headers["accept-encoding"] == "identity"
    assert body.read == 0
