"""Build the right adapter for a provider's configuration."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from actors import ProviderConfig

from ._anthropic import AnthropicProvider
from ._openai import OpenAIProvider

logger = logging.getLogger(__name__)


def make_provider(
    config: ProviderConfig,
    *,
    environ: Mapping[str, str] = os.environ,
    probe_model: str | None = None,
) -> OpenAIProvider | AnthropicProvider:
    """Build the adapter for ``config``, reading its API key from ``config.api_key_env``.

    A missing or empty variable is not an error (local servers need no key): the provider sends
    no key and a WARNING names the variable, never a value. The caller owns the provider and
    closes it with ``aclose()``.
    """
    api_key: str | None = None
    if config.api_key_env:
        api_key = environ.get(config.api_key_env) or None
        if api_key is None:
            logger.warning(
                "provider %s: environment variable %s is not set; sending requests without an "
                "API key",
                config.name,
                config.api_key_env,
            )
    if config.kind == "anthropic":
        return AnthropicProvider(config, api_key=api_key, probe_model=probe_model)
    return OpenAIProvider(config, api_key=api_key, probe_model=probe_model)
