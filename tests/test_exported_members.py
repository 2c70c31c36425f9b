"""The public surface is exactly `translator.__all__` (httpx keeps its exports honest this way)."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import translator


def test_all_is_complete_without_duplicates():
    public = {name for name in dir(translator) if not name.startswith("_")}
    # `annotations` comes from `from __future__ import annotations`; private modules are not API.
    public -= {"annotations"}
    # The subpackages (translator.chat, translator.connect, ...) group the private modules by job.
    public -= {name for name in public if isinstance(getattr(translator, name), types.ModuleType)}
    assert len(translator.__all__) == len(set(translator.__all__))
    assert set(translator.__all__) == public


def test_every_private_module_export_is_reexported():
    package = Path(translator.__file__).parent
    for module in sorted(package.rglob("_*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                names = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
                missing = set(names) - set(translator.__all__)
                assert not missing, f"{module.name} exports {missing} but translator does not"
