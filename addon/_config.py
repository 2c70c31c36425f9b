"""The YAML config file: configured Kimi accounts, gateway keys, and addon options.

```yaml
accounts:
  - label: alice
    refresh_token: "eyJ..."        # or
    refresh_token_env: KIMI_ALICE  # the name of an environment variable holding it
    dialect: connect               # optional: legacy | connect
keys:
  - key: sk-...                    # or key_env
    label: team
    accounts: [alice]              # optional; default: every configured account
require_key: true                  # refuse raw Kimi tokens from clients when keys exist
admin_key: sk-admin-...            # optional (or admin_key_env), for /v1/accounts
options:                           # any addon option by name, passed through as a dict
  port: 8000
```

Every error is a `ConfigError` naming the file, the key path (`accounts[0].refresh_token_env`)
and what is wrong; no message and no `repr` ever contains a token or key value.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._secrets import redact

__all__ = ["AccountConfig", "Config", "ConfigError", "KeyConfig", "load_config", "parse_config"]

DIALECTS = ("legacy", "connect")
#: gateway keys stand in for passwords; short ones can be guessed
MIN_KEY_LENGTH = 16


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message says where and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    """A configured Kimi account. `refresh_token` is the configured value, not the current one
    (the store owns the current one once the token has rotated)."""

    label: str
    refresh_token: str = field(repr=False)
    dialect: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyConfig:
    """A gateway key clients may present instead of Kimi tokens; `accounts` None means all."""

    key: str = field(repr=False)
    label: str
    accounts: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A parsed config file."""

    accounts: tuple[AccountConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()
    require_key: bool = True
    admin_key: str | None = field(repr=False, default=None)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: things worth telling the operator that do not stop the start (e.g. file permissions)
    warnings: tuple[str, ...] = ()

    @property
    def refuses_raw_tokens(self) -> bool:
        """True when clients must present a gateway key: `require_key` and keys exist."""
        return self.require_key and bool(self.keys)


_TOP = ("accounts", "keys", "require_key", "admin_key", "admin_key_env", "options")
_ACCOUNT = ("label", "refresh_token", "refresh_token_env", "dialect")
_KEY = ("key", "key_env", "label", "accounts")


class _Parser:
    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ

    def fail(self, path: str, problem: str) -> ConfigError:
        where = f"{self.source}: {path}" if path else self.source
        return ConfigError(f"{where}: {problem}")

    def mapping(self, value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {_kind(key)}")
            if key not in allowed:
                # the key name is shown redacted: a token pasted as a key must not be echoed
                raise self.fail(
                    _join(path, redact(key)),
                    f"unknown key (expected one of: {', '.join(allowed)})",
                )
        return value

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def secret(self, entry: Mapping[str, Any], path: str, name: str) -> str | None:
        """`name` inline or `name_env` (an environment variable); exactly one, or neither."""
        inline, env = entry.get(name), entry.get(name + "_env")
        if inline is not None and env is not None:
            raise self.fail(path, f"give either {name} or {name}_env, not both")
        if env is not None:
            var = self.text(env, _join(path, name + "_env"))
            value = self.environ.get(var)
            if value is None or not value.strip():
                raise self.fail(
                    _join(path, name + "_env"), f"environment variable {var} is not set or empty"
                )
            return self._token(value, _join(path, name + "_env"), f"environment variable {var}")
        if inline is not None:
            if not isinstance(inline, str):
                raise self.fail(_join(path, name), f"must be a string, got {_kind(inline)}")
            return self._token(inline, _join(path, name), "the value")
        return None

    def _token(self, value: str, path: str, what: str) -> str:
        value = value.strip()
        if not value:
            raise self.fail(path, f"{what} is empty")
        # tokens travel comma-joined in one header, so a comma or space would split one in two
        if any(c.isspace() or c == "," for c in value):
            raise self.fail(path, f"{what} contains whitespace or a comma")
        return value

    def account(self, value: object, path: str) -> AccountConfig:
        entry = self.mapping(value, path, _ACCOUNT)
        label = self.text(entry.get("label"), _join(path, "label"))
        token = self.secret(entry, path, "refresh_token")
        if token is None:
            raise self.fail(path, "needs refresh_token or refresh_token_env")
        dialect = entry.get("dialect")
        if dialect is not None and dialect not in DIALECTS:
            raise self.fail(_join(path, "dialect"), f"must be one of {', '.join(DIALECTS)}")
        return AccountConfig(label=label, refresh_token=token, dialect=dialect)

    def key(self, value: object, path: str, labels: tuple[str, ...]) -> KeyConfig:
        entry = self.mapping(value, path, _KEY)
        label = self.text(entry.get("label"), _join(path, "label"))
        key = self.secret(entry, path, "key")
        if key is None:
            raise self.fail(path, "needs key or key_env")
        self.check_key(key, _join(path, "key"))
        accounts: tuple[str, ...] | None = None
        if "accounts" in entry:
            raw = entry["accounts"]
            if not isinstance(raw, list) or not raw:
                raise self.fail(_join(path, "accounts"), "must be a non-empty list of labels")
            names = tuple(self.text(x, f"{path}.accounts[{i}]") for i, x in enumerate(raw))
            for i, name in enumerate(names):
                if name not in labels:
                    raise self.fail(f"{path}.accounts[{i}]", f"no configured account {name!r}")
            accounts = tuple(dict.fromkeys(names))
        return KeyConfig(key=key, label=label, accounts=accounts)

    def check_key(self, key: str, path: str) -> None:
        if not key.startswith("sk-") or len(key) < MIN_KEY_LENGTH:
            raise self.fail(
                path, f"must start with 'sk-' and be at least {MIN_KEY_LENGTH} characters long"
            )

    def config(self, data: object) -> Config:
        if data is None:  # an empty file
            return Config()
        top = self.mapping(data, "", _TOP)
        accounts = tuple(
            self.account(x, f"accounts[{i}]")
            for i, x in enumerate(self.list(top.get("accounts"), "accounts"))
        )
        labels = tuple(a.label for a in accounts)
        if len(set(labels)) != len(labels):
            dup = next(x for x in labels if labels.count(x) > 1)
            raise self.fail("accounts", f"label {dup!r} is used twice")
        keys = tuple(
            self.key(x, f"keys[{i}]", labels)
            for i, x in enumerate(self.list(top.get("keys"), "keys"))
        )
        if len({k.key for k in keys}) != len(keys):
            raise self.fail("keys", "the same key is configured twice")
        require_key = top.get("require_key", True)
        if not isinstance(require_key, bool):
            raise self.fail("require_key", f"must be true or false, got {_kind(require_key)}")
        admin_key = self.secret(top, "", "admin_key")
        if admin_key is not None:
            self.check_key(admin_key, "admin_key")
            if any(k.key == admin_key for k in keys):
                raise self.fail("admin_key", "must differ from every gateway key")
        options = top.get("options", {})
        options = {} if options is None else options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise self.fail("options", "must be a mapping of option names to values")
        return Config(
            accounts=accounts,
            keys=keys,
            require_key=require_key,
            admin_key=admin_key,
            options=dict(options),
        )

    def list(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {_kind(value)}")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    # the type, never the value: the value may be a token
    return "nothing" if value is None else type(value).__name__


def parse_config(
    data: object, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate already-loaded YAML data.

    Raises:
        ConfigError: with `source`, the key path and the problem.
    """
    return _Parser(source, os.environ if environ is None else environ).config(data)


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the YAML config file at `path` (`yaml.safe_load`).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the config file: {type(exc).__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # the default message quotes the offending line, which may hold a token
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = redact(str(getattr(exc, "problem", None) or "syntax error"))
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    config = parse_config(data, source=source, environ=environ)
    has_inline = isinstance(data, dict) and (
        "admin_key" in data
        or any(isinstance(a, dict) and "refresh_token" in a for a in data.get("accounts") or [])
        or any(isinstance(k, dict) and "key" in k for k in data.get("keys") or [])
    )
    if has_inline and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (
            f"{source} holds secrets inline but other users may read it "
            f"(mode {stat.S_IMODE(mode):o}): chmod 600 it or use *_env references"
        )
        config = dataclasses.replace(config, warnings=(warning,))
    return config
