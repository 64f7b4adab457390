"""Upstream provider adapters over httpx."""

from ._anthropic import AnthropicEventParser as AnthropicEventParser
from ._anthropic import AnthropicProvider as AnthropicProvider
from ._anthropic import dropped_fields as dropped_fields
from ._chunked import install_merging_chunked_reader as install_merging_chunked_reader
from ._factory import make_provider as make_provider
from ._openai import OpenAIChunkParser as OpenAIChunkParser
from ._openai import OpenAIProvider as OpenAIProvider
from ._sse import SSEDecoder as SSEDecoder
from ._sse import SSEError as SSEError
from ._sse import SSEEvent as SSEEvent
