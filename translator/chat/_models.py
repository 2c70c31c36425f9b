"""Model names → Kimi flags, as data.

A model name is read by walking `MODEL_TABLE` in order: every rule that matches applies its flag
changes on top of the defaults and of the earlier rules, so capabilities combine
(`kimi-search-silent`, `kimi-k2.6-search-thinking`) and later, more specific rules win
(`kimi-k2-thinking` after `kimi-k2`). The legacy rules are the reference client's substring
tests (`search`, `research`, `math`, `k1`, `silent`, a 20-character agent id); the Connect rules
name the www.kimi.com scenarios. Substring and prefix tests ignore case, so `Kimi-Search` searches.

Quirk kept on purpose: `research` contains `search`, so `kimi-research` turns on both
`use_research` and `use_search`, as the reference did.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from translator._errors import LocalProtocolError
from translator._plan import ModelFlags

__all__ = [
    "K1_AGENT_ID",
    "MODEL_CATALOG",
    "MODEL_NAME",
    "MODEL_TABLE",
    "ModelRule",
    "model_list",
    "resolve_model",
]

#: the Kimi+ agent id of the k1 reasoning model (legacy dialect)
K1_AGENT_ID: Final = "crm40ee9e5jvhsn7ptcg"


class _ModelName:
    """Placeholder in a rule's changes: "the model name itself" (for agent ids)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MODEL_NAME"


MODEL_NAME: Final = _ModelName()

MatchKind = Literal["exact", "prefix", "contains", "pattern"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRule:
    """When `match` fits the model name (as `kind` says), apply `changes` to the flags."""

    kind: MatchKind
    match: str
    changes: Mapping[str, Any]

    def matches(self, name: str) -> bool:
        folded = name.lower()
        if self.kind == "exact":
            return folded == self.match
        if self.kind == "prefix":
            return folded.startswith(self.match)
        if self.kind == "contains":
            return self.match in folded
        # "pattern" is case-sensitive: agent ids are lower-case [0-9a-z] and used verbatim.
        return re.fullmatch(self.match, name) is not None


def _rule(kind: MatchKind, match: str, **changes: Any) -> ModelRule:
    return ModelRule(kind=kind, match=match, changes=changes)


MODEL_TABLE: Final[tuple[ModelRule, ...]] = (
    # --- legacy dialect (kimi.moonshot.cn): the reference client's substring tests ---
    _rule("contains", "search", use_search=True),
    _rule("contains", "research", use_research=True),
    _rule("contains", "math", use_math=True),
    _rule("contains", "k1", kimiplus_id=K1_AGENT_ID),
    # Newer web clients name the model in a `model` field instead of using the k1 agent id.
    _rule("exact", "kimi-k1.5", kimiplus_id="kimi", model="k1.5"),
    _rule("contains", "silent", silent=True),
    # A bare Kimi+ agent id (20 characters [0-9a-z]) is the agent to talk to.
    _rule("pattern", "[0-9a-z]{20}", kimiplus_id=MODEL_NAME),
    # --- Connect dialect (www.kimi.com): scenarios; prefixes so suffixes like -search combine ---
    _rule("prefix", "kimi-k2", scenario="SCENARIO_K2"),
    _rule("prefix", "kimi-k2.5", scenario="SCENARIO_K2D5"),
    _rule("prefix", "kimi-k2.6", scenario="SCENARIO_K2D6"),
    _rule("prefix", "kimi-k2-thinking", scenario="SCENARIO_K2_THINKING"),
    _rule("contains", "thinking", thinking=True),
    _rule(
        "prefix",
        "kimi-ok-computer",
        scenario="SCENARIO_OK_COMPUTER",
        kimiplus_id="ok-computer",
        agent_mode="TYPE_NORMAL",
    ),
    _rule("exact", "kimi-ok-computer-ultra", agent_mode="TYPE_ULTRA"),
)

#: reasoning_effort → thinking; OpenAI's "none"/"minimal" ask for no (or barely any) reasoning
_EFFORT_THINKING: Final[Mapping[str, bool]] = {
    "none": False,
    "minimal": False,
    "low": True,
    "medium": True,
    "high": True,
    "xhigh": True,
    "max": True,
}


def resolve_model(
    name: str, *, use_search: bool = False, reasoning_effort: str | None = None
) -> ModelFlags:
    """The Kimi flags for model `name`, plus the request's `use_search` and `reasoning_effort`.

    Unknown names (e.g. `gpt-4o`) get the default flags: plain Kimi chat.

    Raises:
        LocalProtocolError: `reasoning_effort` is not one of OpenAI's values (param
            "reasoning_effort").
    """
    changes: dict[str, Any] = {}
    for rule in MODEL_TABLE:
        if rule.matches(name):
            changes.update({k: name if v is MODEL_NAME else v for k, v in rule.changes.items()})
    if use_search:
        changes["use_search"] = True
    if reasoning_effort is not None:
        if reasoning_effort not in _EFFORT_THINKING:
            raise LocalProtocolError(
                f"reasoning_effort must be one of {sorted(_EFFORT_THINKING)}, "
                f"not {reasoning_effort!r}",
                param="reasoning_effort",
                code="invalid_value",
            )
        changes["thinking"] = _EFFORT_THINKING[reasoning_effort]
    return dataclasses.replace(ModelFlags(), **changes)


#: the names /v1/models lists, with what each one does
MODEL_CATALOG: Final[tuple[tuple[str, str], ...]] = (
    ("kimi", "Kimi chat (default; any unknown model name behaves like this)"),
    ("kimi-search", "Kimi chat with web search"),
    ("kimi-search-silent", "web search; results go to annotations, not into the answer text"),
    ("kimi-research", "Kimi deep research (also searches; limited daily quota)"),
    ("kimi-math", "Kimi with the math mode"),
    ("kimi-k1", "the k1 long-thinking reasoning agent (legacy dialect)"),
    ("kimi-k1.5", "the k1.5 reasoning model, named by the `model` field (legacy dialect)"),
    ("kimi-k2", "Kimi K2 (www.kimi.com scenario SCENARIO_K2)"),
    ("kimi-k2.5", "Kimi K2.5, the www.kimi.com default (SCENARIO_K2D5)"),
    ("kimi-k2.6", "Kimi K2.6 (SCENARIO_K2D6)"),
    ("kimi-k2-thinking", "Kimi K2 with thinking (SCENARIO_K2_THINKING); reasoning is streamed"),
    ("kimi-k2.5-thinking", "Kimi K2.5 with thinking on"),
    ("kimi-ok-computer", "the OK Computer agent (SCENARIO_OK_COMPUTER; may need a paid plan)"),
)


def model_list(created: int) -> dict[str, Any]:
    """The OpenAI `GET /v1/models` body listing `MODEL_CATALOG`; `created` is a Unix time."""
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "kimi-free-api",
                "description": description,
            }
            for model_id, description in MODEL_CATALOG
        ],
    }
