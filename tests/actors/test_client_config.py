"""``[clients.NAME]`` tables: what is accepted, and what a mistake's message names."""

from __future__ import annotations

from typing import Any

import pytest

from actors import ClientConfig, ConfigError, config_from_dict

DIGEST = "ab" * 32


def with_clients(clients: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"kind": "openai", "base_url": "http://p.invalid/v1"}},
        "routes": {
            "default": {"targets": [{"provider": "p", "model": "m"}]},
            "private": {"targets": [{"provider": "p", "model": "m"}]},
        },
        "clients": clients,
    }


def test_clients_are_parsed_with_their_routes_and_limits() -> None:
    config = config_from_dict(
        with_clients(
            {
                "alice": {
                    "key_env": "ALICE_KEY",
                    "routes": ["default"],
                    "max_streams": 2,
                    "requests_per_minute": 60,
                    "tokens_per_minute": 5000,
                    "priority": 3,
                },
                "bob": {"key_sha256": DIGEST},
            }
        )
    )
    assert config.clients["alice"] == ClientConfig(
        name="alice", key_env="ALICE_KEY", routes=("default",), max_streams=2,
        requests_per_minute=60, tokens_per_minute=5000, priority=3,
    )  # fmt: skip
    assert config.clients["bob"].routes is None and config.clients["bob"].max_streams is None


def test_no_clients_means_none() -> None:
    assert config_from_dict(with_clients({})).clients == {}


@pytest.mark.parametrize(
    ("table", "where", "words"),
    [
        ({}, "f.toml: clients.c", "exactly one of key_env"),
        ({"key_env": "K", "key_sha256": DIGEST}, "f.toml: clients.c", "exactly one of key_env"),
        ({"key_sha256": "abc"}, "clients.c.key_sha256", "64 hex digits"),
        ({"key_sha256": "zz" * 32}, "clients.c.key_sha256", "64 hex digits"),
        ({"key_env": "K", "routes": ["nope"]}, "clients.c.routes[0]", "unknown route 'nope'"),
        ({"key_env": "K", "routes": "default"}, "clients.c.routes", "list of route names"),
        ({"key_env": "K", "max_streams": 0}, "clients.c.max_streams", "at least 1"),
        ({"key_env": "K", "requests_per_minute": 0}, "clients.c.requests_per_minute", "at least"),
        ({"key_env": "K", "tokens_per_minute": 0}, "clients.c.tokens_per_minute", "at least"),
        ({"key_env": "K", "tokens_per_minute": 1.5}, "clients.c.tokens_per_minute", "integer"),
        ({"key_env": "K", "key": "sk-x"}, "clients.c.key", "unknown key"),
    ],
)
def test_mistakes_name_the_file_the_key_and_the_fix(
    table: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(with_clients({"c": table}), source="f.toml")
    assert where in str(error.value) and words in str(error.value)
    assert "sk-x" not in str(error.value)  # a key written in the wrong place is not echoed
