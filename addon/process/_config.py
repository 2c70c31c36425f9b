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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from addon.accounts._secrets import redact

__all__ = ["AccountConfig", "Config", "ConfigError", "KeyConfig", "load_config", "parse_config"]

DIALECTS = ("legacy", "connect")
#: gateway keys stand in for passwords; short ones can be guessed
MIN_KEY_LENGTH = 16


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message says where and why.

    `errors` lists every problem found (one line each: `file:line: key.path: problem`, or
    `file: key.path: problem` when the line is unknown); the message shows them all at once.
    """

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors or (message,)


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


class _Invalid(Exception):
    """A problem was recorded; give up on the current entry (its siblings are still checked)."""


#: `_Parser.attempt`'s answer when the attempt recorded a problem
_FAILED: Any = object()


class _Parser:
    """Checks everything it can and records every problem, so one run lists them all."""

    def __init__(
        self, source: str, environ: Mapping[str, str], lines: Mapping[str, int] | None = None
    ) -> None:
        self.source = source
        self.environ = environ
        #: key path -> 1-based line in the file (empty for data that did not come from a file)
        self.lines = lines or {}
        #: (line or 0, message) for every problem found
        self.errors: list[tuple[int, str]] = []

    def line_of(self, path: str) -> int | None:
        """The line of `path`, else of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    def fail(self, path: str, problem: str, *, at: str | None = None) -> _Invalid:
        """Record a problem at `path` (`at`: the path to look its line up under, when `path`
        is shown redacted); returns the exception that abandons the current entry."""
        line = self.line_of(path if at is None else at)
        where = self.source if line is None else f"{self.source}:{line}"
        text = f"{where}: {path}: {problem}" if path else f"{where}: {problem}"
        self.errors.append((line or 0, text))
        return _Invalid()

    def attempt(self, check: Callable[..., Any], *args: Any) -> Any:
        """`check(*args)`, or `_FAILED` when it recorded a problem."""
        try:
            return check(*args)
        except _Invalid:
            return _FAILED

    def mapping(self, value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        bad = False
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {_kind(key)}")
                bad = True
            elif key not in allowed:
                # the key name is shown redacted: a token pasted as a key must not be echoed
                self.fail(
                    _join(path, redact(key)),
                    f"unknown key (expected one of: {', '.join(allowed)})",
                    at=_join(path, key),
                )
                bad = True
        if bad:
            raise _Invalid()
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
        label = self.attempt(lambda: self.text(entry.get("label"), _join(path, "label")))
        token = self.attempt(lambda: self.secret(entry, path, "refresh_token"))
        if token is None:
            self.fail(path, "needs refresh_token or refresh_token_env")
            token = _FAILED
        dialect = entry.get("dialect")
        if dialect is not None and dialect not in DIALECTS:
            self.fail(_join(path, "dialect"), f"must be one of {', '.join(DIALECTS)}")
            dialect = _FAILED
        if _FAILED in (label, token, dialect):
            raise _Invalid()
        return AccountConfig(label=label, refresh_token=token, dialect=dialect)

    def key(self, value: object, path: str, labels: tuple[str, ...] | None) -> KeyConfig:
        """`labels` None: the accounts section had problems, so names are not checked."""
        entry = self.mapping(value, path, _KEY)
        label = self.attempt(lambda: self.text(entry.get("label"), _join(path, "label")))

        def key_value() -> str:
            key = self.secret(entry, path, "key")
            if key is None:
                raise self.fail(path, "needs key or key_env")
            self.check_key(key, _join(path, "key"))
            return key

        key = self.attempt(key_value)
        accounts: tuple[str, ...] | None = None
        if "accounts" in entry:
            accounts = self.attempt(lambda: self.key_accounts(entry["accounts"], path, labels))
        if _FAILED in (label, key, accounts):
            raise _Invalid()
        return KeyConfig(key=key, label=label, accounts=accounts)

    def key_accounts(
        self, raw: object, path: str, labels: tuple[str, ...] | None
    ) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(_join(path, "accounts"), "must be a non-empty list of labels")
        names = [self.attempt(self.text, x, f"{path}.accounts[{i}]") for i, x in enumerate(raw)]
        for i, name in enumerate(names):
            if name is not _FAILED and labels is not None and name not in labels:
                self.fail(f"{path}.accounts[{i}]", f"no configured account {name!r}")
                names[i] = _FAILED
        if _FAILED in names:
            raise _Invalid()
        return tuple(dict.fromkeys(names))

    def check_key(self, key: str, path: str) -> None:
        if not key.startswith("sk-") or len(key) < MIN_KEY_LENGTH:
            raise self.fail(
                path, f"must start with 'sk-' and be at least {MIN_KEY_LENGTH} characters long"
            )

    def config(self, data: object) -> Config:
        if data is None:  # an empty file
            return Config()
        try:
            top = self.mapping(data, "", _TOP)
        except _Invalid:
            if not isinstance(data, dict):
                raise
            top = {k: v for k, v in data.items() if k in _TOP}  # check the known keys too
        accounts = self.entries(top.get("accounts"), "accounts", self.account)
        labels: tuple[str, ...] | None = None
        if accounts is not _FAILED:
            labels = tuple(a.label for a in accounts)
            if len(set(labels)) != len(labels):
                dup = next(x for x in labels if labels.count(x) > 1)
                self.fail("accounts", f"label {dup!r} is used twice")
        keys = self.entries(top.get("keys"), "keys", lambda x, p: self.key(x, p, labels))
        if keys is not _FAILED and len({k.key for k in keys}) != len(keys):
            self.fail("keys", "the same key is configured twice")
        require_key = top.get("require_key", True)
        if not isinstance(require_key, bool):
            self.fail("require_key", f"must be true or false, got {_kind(require_key)}")

        def admin() -> str | None:
            admin_key = self.secret(top, "", "admin_key")
            if admin_key is not None:
                self.check_key(admin_key, "admin_key")
                if keys is not _FAILED and any(k.key == admin_key for k in keys):
                    raise self.fail("admin_key", "must differ from every gateway key")
            return admin_key

        admin_key = self.attempt(admin)
        options = top.get("options", {})
        options = {} if options is None else options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            self.fail("options", "must be a mapping of option names to values")
        if self.errors:
            raise _Invalid()
        return Config(
            accounts=accounts,
            keys=keys,
            require_key=require_key,
            admin_key=admin_key,
            options=dict(options),
        )

    def entries(self, value: object, path: str, parse: Callable[[object, str], Any]) -> Any:
        """Every entry of the list at `path` parsed; `_FAILED` when any had a problem."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {_kind(value)}")
            return _FAILED
        parsed = [self.attempt(parse, x, f"{path}[{i}]") for i, x in enumerate(value)]
        return _FAILED if _FAILED in parsed else tuple(parsed)

    def finish(self, data: object) -> Config:
        """`config(data)`, or a ConfigError listing every problem."""
        try:
            return self.config(data)
        except _Invalid:
            pass
        # in file order (problems without a line first); sorted() keeps the parse order of ties
        errors = tuple(text for _, text in sorted(self.errors, key=lambda e: e[0]))
        if len(errors) == 1:
            raise ConfigError(errors[0], errors)
        listing = "\n".join(f"  {e}" for e in errors)
        raise ConfigError(f"{self.source}: {len(errors)} errors:\n{listing}", errors)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    # the type, never the value: the value may be a token
    return "nothing" if value is None else type(value).__name__


def _key_lines(
    node: yaml.Node | None, path: str = "", out: dict[str, int] | None = None
) -> dict[str, int]:
    """Key path (`accounts[0].label`, as the parser names it) -> the 1-based line it is on."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = _join(path, str(key_node.value))
                out.setdefault(child, key_node.start_mark.line + 1)
                _key_lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            out.setdefault(child, item.start_mark.line + 1)
            _key_lines(item, child, out)
    return out


def parse_config(
    data: object, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate already-loaded YAML data.

    Raises:
        ConfigError: with `source`, the key path and the problem.
    """
    return _Parser(source, os.environ if environ is None else environ).finish(data)


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
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        # the default message quotes the offending line, which may hold a token
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = redact(str(getattr(exc, "problem", None) or "syntax error"))
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    parser = _Parser(source, os.environ if environ is None else environ, lines)
    config = parser.finish(data)
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
