from __future__ import annotations

import os

import pytest

from addon.process._config import Config, ConfigError, load_config, parse_config

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXNlY3JldA"
KEY = "sk-team-0123456789abcdef"
ADMIN = "sk-admin-0123456789abcdef"


def write(tmp_path, text, mode=0o600):
    path = tmp_path / "kimi.yaml"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_full_config(tmp_path):
    path = write(
        tmp_path,
        f"""
accounts:
  - label: alice
    refresh_token: "{TOKEN}"
    dialect: connect
  - label: bob
    refresh_token_env: KIMI_BOB
keys:
  - key: {KEY}
    label: team
    accounts: [alice]
  - key_env: TEAM2_KEY
    label: everyone
require_key: true
admin_key: {ADMIN}
options:
  port: 8001
  kimi_base_url: https://www.kimi.com
""",
    )
    env = {"KIMI_BOB": "bob-token-123", "TEAM2_KEY": "sk-second-key-0123456"}
    config = load_config(path, environ=env)
    assert [a.label for a in config.accounts] == ["alice", "bob"]
    assert config.accounts[0].refresh_token == TOKEN
    assert config.accounts[0].dialect == "connect"
    assert config.accounts[1].refresh_token == "bob-token-123"
    assert config.accounts[1].dialect is None
    assert config.keys[0].accounts == ("alice",)
    assert config.keys[1].accounts is None
    assert config.keys[1].key == "sk-second-key-0123456"
    assert config.admin_key == ADMIN
    assert config.options == {"port": 8001, "kimi_base_url": "https://www.kimi.com"}
    assert config.refuses_raw_tokens
    assert config.warnings == ()
    text = repr(config)
    for secret in (TOKEN, KEY, ADMIN, "bob-token-123", "sk-second-key-0123456"):
        assert secret not in text


def test_empty_file_and_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert config.require_key
    assert not config.refuses_raw_tokens  # no keys: raw tokens are fine
    assert not parse_config(
        {"keys": [{"key": KEY, "label": "k"}], "require_key": False}
    ).refuses_raw_tokens


def test_world_readable_inline_secrets_warn(tmp_path):
    path = write(tmp_path, f"accounts:\n  - label: a\n    refresh_token: {TOKEN}\n", mode=0o644)
    config = load_config(path)
    assert len(config.warnings) == 1
    assert "644" in config.warnings[0]
    assert TOKEN not in config.warnings[0]


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        ([1], "<config>", "must be a mapping, got list"),
        ({"acounts": []}, "acounts", "unknown key"),
        ({"accounts": {"a": 1}}, "accounts", "must be a list"),
        ({"accounts": [{"label": "a"}]}, "accounts[0]", "needs refresh_token or refresh_token_env"),
        (
            {"accounts": [{"label": "a", "refresh_token": TOKEN, "token": "x"}]},
            "accounts[0].token",
            "unknown key",
        ),
        ({"accounts": [{"refresh_token": TOKEN}]}, "accounts[0].label", "non-empty string"),
        (
            {"accounts": [{"label": "a", "refresh_token": 12345}]},
            "accounts[0].refresh_token",
            "must be a string, got int",
        ),
        (
            {"accounts": [{"label": "a", "refresh_token": "a b"}]},
            "accounts[0].refresh_token",
            "whitespace or a comma",
        ),
        (
            {"accounts": [{"label": "a", "refresh_token": TOKEN, "refresh_token_env": "X"}]},
            "accounts[0]",
            "not both",
        ),
        (
            {"accounts": [{"label": "a", "refresh_token_env": "KIMI_MISSING"}]},
            "accounts[0].refresh_token_env",
            "KIMI_MISSING is not set",
        ),
        (
            {"accounts": [{"label": "a", "refresh_token": TOKEN, "dialect": "grpc"}]},
            "accounts[0].dialect",
            "legacy, connect",
        ),
        (
            {
                "accounts": [
                    {"label": "a", "refresh_token": TOKEN},
                    {"label": "a", "refresh_token": "t2"},
                ]
            },
            "accounts",
            "used twice",
        ),
        ({"keys": [{"key": "sk-short", "label": "k"}]}, "keys[0].key", "at least 16"),
        (
            {"keys": [{"key": "pk-0123456789abcdefgh", "label": "k"}]},
            "keys[0].key",
            "start with 'sk-'",
        ),
        ({"keys": [{"key": KEY}]}, "keys[0].label", "non-empty string"),
        ({"keys": [{"label": "k"}]}, "keys[0]", "needs key or key_env"),
        (
            {"keys": [{"key": KEY, "label": "k", "accounts": ["nobody"]}]},
            "keys[0].accounts[0]",
            "no configured account 'nobody'",
        ),
        (
            {"keys": [{"key": KEY, "label": "k", "accounts": []}]},
            "keys[0].accounts",
            "non-empty list",
        ),
        ({"keys": [{"key": KEY, "label": "a"}, {"key": KEY, "label": "b"}]}, "keys", "twice"),
        ({"require_key": "yes"}, "require_key", "true or false"),
        ({"admin_key": KEY, "keys": [{"key": KEY, "label": "k"}]}, "admin_key", "differ"),
        ({"options": [1]}, "options", "mapping"),
    ],
)
def test_errors_name_the_place(data, where, what):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="kimi.yaml", environ={})
    message = str(info.value)
    assert message.startswith("kimi.yaml")
    if where != "<config>":
        assert f"kimi.yaml: {where}: " in message
    assert what in message
    for secret in (TOKEN, KEY):
        assert secret not in message


def test_unknown_key_that_is_a_token_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        parse_config({TOKEN: 1}, source="c.yaml")
    assert TOKEN not in str(info.value)
    assert "unknown key" in str(info.value)


def test_env_var_empty_is_an_error():
    with pytest.raises(ConfigError, match="KIMI_A is not set or empty"):
        parse_config(
            {"accounts": [{"label": "a", "refresh_token_env": "KIMI_A"}]}, environ={"KIMI_A": " "}
        )


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path):
    path = write(tmp_path, f"accounts:\n  - label: a\n    refresh_token: {TOKEN}\n  bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "not valid YAML at line" in message
    assert TOKEN not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")
