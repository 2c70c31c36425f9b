"""translator/ does no I/O: it imports no network, event loop, clock or randomness module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import translator

# The same list as ruff's banned-api (TID251) for translator/: no network, loop, clock or chance.
BANNED = {"httpx", "mitmproxy", "asyncio", "socket", "random", "uuid", "time", "aiohttp"}
# The response side, as paths below translator/ (module names with "/" for ".").
MINE = [
    "_sse",
    "legacy/_stream",
    "legacy/_errors",
    "chat/_assembler",
    "chat/_response",
    "chat/_fold",
    "_usage",
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] != "translator"  # its own modules
        ):
            names.add(node.module.split(".")[0])
    return names


def test_translator_sources_import_nothing_that_does_io():
    root = Path(translator.__file__).parent
    for path in sorted(root.rglob("*.py")):
        assert not imported_modules(path) & BANNED, str(path.relative_to(root))


def test_response_side_imports_only_pure_stdlib():
    root = Path(translator.__file__).parent
    allowed = {
        "__future__",
        "json",
        "re",
        "enum",
        "dataclasses",
        "typing",
        "collections",
        "codecs",
        "hashlib",
        "math",
    }
    for name in MINE:
        assert imported_modules(root / f"{name}.py") <= allowed, name


def test_importing_the_translator_loads_no_io_module():
    # `time` is imported by the interpreter itself at start-up, so it is checked in the AST scan
    # above; the modules below are not loaded unless someone imports them.
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import translator\n"
        + "".join(f"import translator.{m.replace('/', '.')}\n" for m in MINE)
        + "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & {
        "httpx",
        "mitmproxy",
        "asyncio",
        "socket",
        "random",
        "uuid",
        "aiohttp",
        "ssl",
        "selectors",
        "email",
        "datetime",
    }
