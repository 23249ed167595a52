"""The layout of uws_core: one folder per layer, imports flowing one way, no import cycle, small modules.

report -> experiments -> zoo -> weights -> linalg (a layer may import the layers below it, never above);
``cli`` sits on top. Every import counts, also the ones inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "uws_core"
LAYERS = ["linalg", "weights", "zoo", "experiments", "report"]  # bottom to top
RANK = {layer: i for i, layer in enumerate(LAYERS)} | {"cli": len(LAYERS), "": -1}
MAX_LINES = 400  # "no module over ~400 lines"


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """uws_core modules a file imports, resolving `from pkg import module` and relative imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import (use absolute uws_core.<layer>.<module>)")
            base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ("cli" if parts[1] == "cli" else "")


def test_every_module_lives_in_a_layer():
    loose = [m for m in modules() if layer_of(m) not in RANK or layer_of(m) == ""]
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_imports_flow_down_the_layers():
    mods = modules()
    bad = []
    for mod, path in mods.items():
        for dep in imported_modules(path, set(mods)):
            if RANK[layer_of(dep)] > RANK[layer_of(mod)]:
                bad.append(f"{mod} -> {dep}")
    assert bad == [], "imports against the flow report -> experiments -> zoo -> weights -> linalg:\n" + "\n".join(bad)


def test_no_import_cycle():
    mods = modules()
    graph = {m: imported_modules(p, set(mods)) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_names_its_public_api(layer):
    import importlib
    pkg = importlib.import_module(f"uws_core.{layer}")
    assert pkg.__doc__ and pkg.__all__, f"uws_core.{layer} has no docstring or no __all__"
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, f"uws_core.{layer}.{name} does not load"


def own_public_names(path: Path) -> list[str]:
    """The names of a module's ``__all__`` that it defines itself (not those it imports from elsewhere)."""
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets):
            return [e.value for e in n.value.elts if e.value not in imported]
    return []


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layers_api_table_is_its_modules_all(layer):
    """The layer's table (module -> names) lists exactly the names each module's ``__all__`` defines itself
    (a name re-exported by another module is listed once, under the module that defines it)."""
    import importlib
    pkg = importlib.import_module(f"uws_core.{layer}")
    expected, seen = {}, set()
    for p in sorted((PACKAGE / layer).glob("*.py")):
        names = set(own_public_names(p)) - seen if p.name != "__init__.py" else set()
        seen |= names
        if names:
            expected[p.stem] = names
    assert {m: set(v) for m, v in pkg._API.items()} == expected, \
        f"uws_core/{layer}/__init__.py is out of date with its modules' __all__"


def test_modules_stay_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"
