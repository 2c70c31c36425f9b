"""The models www.kimi.com offers (`ConfigService/GetAvailableModels`) → OpenAI model ids, and
the model names users type → the Connect chat fields. Pure data in, data out.

Kimi's catalog (research notes §B.7, §B.9) lists models by an `id` such as `k2d6-chat` or
`k3-agent`, each with its `scenario`, an optional agent (`kimiPlusId` + `agentMode`) and the
reasoning efforts it accepts. We name them the way public clients do:

    id k2d6-chat        → kimi-k2.6   (+ kimi-k2.6-thinking: the model can think or not)
    id k3-agent         → kimi-k3     (always reasons: no "-thinking" twin)
    id k3-agent-swarm   → kimi-k3-agent-swarm

Rule: "kimi-" + the id, with a `d` between digits read as a decimal point, and a final `-chat`
or `-agent` dropped. A model that offers `REASONING_EFFORT_NONE` next to other efforts gets a
`-thinking` twin; one that offers no `NONE` always thinks.

A name a user types is read as a catalog name plus any of the suffixes `-thinking`, `-search`
and `-silent` (in any order); `catalog_changes` gives the `ModelFlags` changes for the catalog
part (scenario, model, agent, thinking when the model always thinks). The suffixes keep the
meaning the static `MODEL_TABLE` gives them. `BUILTIN_CATALOG` is the catalog as the public
record shows it, used when Kimi's own list cannot be fetched.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from translator._errors import RemoteProtocolError
from translator._plan import ChatPlan, KimiCall

from ._calls import UNARY_HEADERS
from ._errors import malformed, present, read_object, read_string

__all__ = [
    "AVAILABLE_MODELS_PATH",
    "BUILTIN_CATALOG",
    "KimiModel",
    "ModelCatalog",
    "OfferedModel",
    "available_models_call",
    "catalog_changes",
    "catalog_model_list",
    "offered_models",
    "read_model_catalog",
    "with_catalog",
]

AVAILABLE_MODELS_PATH: Final = "/apiv2/kimi.gateway.config.v1.ConfigService/GetAvailableModels"
EFFORT_NONE: Final = "REASONING_EFFORT_NONE"
#: suffixes a user may add to a catalog name; their flags come from the static MODEL_TABLE
SUFFIXES: Final = ("-thinking", "-search", "-silent")
_DECIMAL: Final = re.compile(r"(?<=\d)d(?=\d)")
_DROPPED_TAIL: Final = re.compile(r"-(chat|agent)$")
#: what a catalog id may look like before we build a name (and a request field) from it
_SAFE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KimiModel:
    """One entry of `availableModels` (the fields we use)."""

    id: str
    scenario: str
    display_name: str = ""
    description: str = ""
    kimiplus_id: str = ""
    agent_mode: str = ""
    efforts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCatalog:
    models: tuple[KimiModel, ...]
    #: `defaultScenario.model`: the catalog id Kimi's composer starts with ("" if not said)
    default_model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferedModel:
    """An OpenAI model id we list, the Kimi model behind it, and what it sets."""

    name: str
    description: str
    model: KimiModel
    thinking: bool


BUILTIN_CATALOG: Final = ModelCatalog(
    models=(
        KimiModel(
            id="k2d6-chat",
            scenario="SCENARIO_K2D5",
            display_name="Instant",
            description="Kimi K2.6: quick answers; -thinking for reasoning",
            efforts=(EFFORT_NONE, "REASONING_EFFORT_LOW"),
        ),
        KimiModel(
            id="k3-agent",
            scenario="SCENARIO_OK_COMPUTER",
            display_name="K3",
            description="Kimi K3 agent (OK Computer); always reasons",
            kimiplus_id="ok-computer",
            agent_mode="TYPE_NORMAL",
            efforts=("REASONING_EFFORT_LOW", "REASONING_EFFORT_HIGH", "REASONING_EFFORT_MAX"),
        ),
        KimiModel(
            id="k3-agent-swarm",
            scenario="SCENARIO_OK_COMPUTER",
            display_name="K3 Swarm",
            description="Kimi K3 with a swarm of agents (OK Computer, ultra mode)",
            kimiplus_id="ok-computer",
            agent_mode="TYPE_ULTRA",
            efforts=("REASONING_EFFORT_LOW", "REASONING_EFFORT_HIGH", "REASONING_EFFORT_MAX"),
        ),
    ),
    default_model="k2d6-chat",
)


def available_models_call() -> KimiCall:
    """The unary `GetAvailableModels` call (body `{}`)."""
    return KimiCall(method="POST", path=AVAILABLE_MODELS_PATH, headers=UNARY_HEADERS, json={})


def read_model_catalog(body: bytes) -> ModelCatalog:
    """Read a `GetAvailableModels` answer. Entries without a usable `id` or `scenario` are
    skipped (the list grows; one odd entry must not hide the others).

    Raises:
        RemoteProtocolError: the body is not the JSON object of that answer, or lists no model.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise RemoteProtocolError("Kimi's model list is not JSON", code="bad_model_list") from None
    obj = read_object(obj, "GetAvailableModels")
    entries = present(obj.get("availableModels"), [])
    if not isinstance(entries, list):
        raise malformed("availableModels")
    models: list[KimiModel] = []
    for entry in entries:
        model = _read_model(read_object(entry, "availableModels[]"))
        if model is not None and all(m.id != model.id for m in models):
            models.append(model)
    if not models:
        raise RemoteProtocolError("Kimi's model list is empty", code="bad_model_list")
    default = read_object(present(obj.get("defaultScenario"), {}), "defaultScenario")
    return ModelCatalog(
        models=tuple(models), default_model=read_string(default, "model", "defaultScenario")
    )


def _read_model(entry: Mapping[str, Any]) -> KimiModel | None:
    where = "availableModels[]"
    model_id, scenario = read_string(entry, "id", where), read_string(entry, "scenario", where)
    if not _SAFE.fullmatch(model_id) or not _SAFE.fullmatch(scenario):
        return None
    options = present(entry.get("reasoningEffortOptions"), [])
    if not isinstance(options, list):
        raise malformed(f"{where}.reasoningEffortOptions")
    efforts = tuple(
        read_string(read_object(o, f"{where}.reasoningEffortOptions[]"), "effort", where)
        for o in options
    )
    kimiplus, mode = read_string(entry, "kimiPlusId", where), read_string(entry, "agentMode", where)
    return KimiModel(
        id=model_id,
        scenario=scenario,
        display_name=read_string(entry, "displayName", where),
        description=read_string(entry, "description", where),
        kimiplus_id=kimiplus if _SAFE.fullmatch(kimiplus) else "",
        agent_mode=mode if _SAFE.fullmatch(mode) else "",
        efforts=tuple(e for e in efforts if e),
    )


def _base_name(model: KimiModel) -> str:
    return "kimi-" + _DROPPED_TAIL.sub("", _DECIMAL.sub(".", model.id.lower()))


def _always_thinks(model: KimiModel) -> bool:
    return bool(model.efforts) and EFFORT_NONE not in model.efforts


def offered_models(catalog: ModelCatalog) -> tuple[OfferedModel, ...]:
    """The OpenAI model ids for `catalog`, in its order (see the module docstring)."""
    out: list[OfferedModel] = []
    seen: set[str] = set()
    for model in catalog.models:
        base = _base_name(model)
        about = model.description or model.display_name or model.id
        names = [(base, _always_thinks(model), about)]
        if EFFORT_NONE in model.efforts and len(model.efforts) > 1:
            names.append((base + "-thinking", True, about + " (thinking)"))
        for name, thinking, description in names:
            if name not in seen:
                seen.add(name)
                out.append(
                    OfferedModel(name=name, description=description, model=model, thinking=thinking)
                )
    return tuple(out)


def catalog_changes(name: str, catalog: ModelCatalog) -> dict[str, Any] | None:
    """The `ModelFlags` changes the catalog gives model `name` (suffixes `-thinking`,
    `-search`, `-silent` allowed), or None when `catalog` has no such model."""
    stem = name.lower()
    stripped = True
    while stripped:
        stripped = False
        for suffix in SUFFIXES:
            if stem.endswith(suffix):
                stem, stripped = stem[: -len(suffix)], True
    for model in catalog.models:
        if _base_name(model) == stem:
            changes: dict[str, Any] = {"scenario": model.scenario, "model": model.id}
            if model.kimiplus_id and model.agent_mode:
                changes |= {"kimiplus_id": model.kimiplus_id, "agent_mode": model.agent_mode}
            if _always_thinks(model):
                changes["thinking"] = True
            return changes
    return None


def with_catalog(plan: ChatPlan, catalog: ModelCatalog) -> ChatPlan:
    """`plan` with the catalog's fields for its model name (unchanged when the catalog does not
    know the name: the static `MODEL_TABLE` flags stay)."""
    changes = catalog_changes(plan.model, catalog)
    if changes is None:
        return plan
    return dataclasses.replace(plan, flags=dataclasses.replace(plan.flags, **changes))


def catalog_model_list(catalog: ModelCatalog, created: int) -> dict[str, Any]:
    """The OpenAI `GET /v1/models` body for `catalog`; `created` is a Unix time."""
    return {
        "object": "list",
        "data": [
            {
                "id": offered.name,
                "object": "model",
                "created": created,
                "owned_by": "kimi-free-api",
                "description": offered.description,
            }
            for offered in offered_models(catalog)
        ],
    }
