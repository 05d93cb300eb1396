"""The apps stay in their layers: campaigns <- delivery <- tracking <- submission <- audience <- automations.

A lower app never imports a higher one, not even inside a function, and the
modules of an app never import each other in a circle. Read from the source
(every import statement, wherever it stands), so a violation fails here before
it can show up as an import error in one process and not in another.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["campaigns", "delivery", "tracking", "submission", "segments", "audience", "webhooks_out", "automations"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for app in LAYERS for path in sorted((ROOT / app).rglob("*.py"))}


MODULES = _modules()


def _imported(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at the top or inside a function, resolved to a module name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # "from delivery import dispatch" imports the module delivery.dispatch.
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {target for _, target in _imported(name, path) if target in MODULES}
            for name, path in MODULES.items()}


def _upward_imports() -> list[str]:
    found = []
    for name, path in MODULES.items():
        level = LAYERS.index(name.split(".")[0])
        for line, target in _imported(name, path):
            top = target.split(".")[0]
            if top in LAYERS and LAYERS.index(top) > level:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


def _app_graph(app: str) -> dict[str, set[str]]:
    return {name: {t for t in targets if t.split(".")[0] == app}
            for name, targets in _graph().items() if name.split(".")[0] == app}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph (strongly connected components of more than one module)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_layers_are_all_found():
    assert {name.split(".")[0] for name in MODULES} == set(LAYERS)
    assert "delivery.dispatch" in MODULES and "submission.server" in MODULES


def test_no_app_imports_a_layer_above_it():
    upward = _upward_imports()
    assert not upward, "a lower layer imports a higher one (campaigns <- delivery <- tracking <- submission):\n" + \
        "\n".join(upward)


def test_an_import_inside_a_function_counts(tmp_path):
    """Imports inside functions are read too: they were how the layering used to be bent."""
    path = tmp_path / "hook.py"
    path.write_text("def build(send):\n    from submission.build import build_for_send\n    return build_for_send(send)\n")
    assert _imported("delivery.hook", path) == [(2, "submission.build")]


@pytest.mark.parametrize("app", LAYERS)
def test_no_import_circle_inside_an_app(app):
    assert _cycles(_app_graph(app)) == []


def test_a_circle_through_a_function_level_import_is_found():
    """The circle delivery had: dispatch imported tasks inside a function; tasks imports lifecycle, which imports dispatch."""
    graph = _app_graph("delivery")
    graph["delivery.dispatch"] = graph["delivery.dispatch"] | {"delivery.tasks"}
    assert ["delivery.dispatch", "delivery.lifecycle", "delivery.tasks"] in [
        [m for m in circle if m in {"delivery.dispatch", "delivery.lifecycle", "delivery.tasks"}]
        for circle in _cycles(graph)]


LEDGER_COLUMNS = ("lease_token", "lease_owner", "lease_expires_at")


def test_only_the_ledger_touches_a_sends_lease():
    """Every statement about a claim (claim, release, write back, settle, sweep) is in delivery.ledger, where the
    fencing by lease token is checked once; anywhere else a write could skip it."""
    outside = [f"{name}:{n}" for name, path in MODULES.items()
               if name != "delivery.ledger" and ".migrations." not in name and name != "delivery.models"
               for n, line in enumerate(path.read_text().splitlines(), 1) if any(c in line for c in LEDGER_COLUMNS)]
    assert outside == []
