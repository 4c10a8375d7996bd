"""The package map as rules: what each package may import, no import cycles, modules of a readable size."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mmcl", "streams", "extractors")
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `name` imports, at any depth of its code (a function's import counts too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found - {name}


GRAPH = {name: imports_of(name, path, project_modules()) for name, path in project_modules().items()}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# (importer package, packages it must not import, why)
RULES = [
    ("mmcl", ("streams", "extractors"), "the model is usable from a notebook: no service and no media code"),
    ("extractors", ("streams",), "extractors turn media into features; only mmcl/ is below them"),
    ("streams.worker", ("streams.local", "streams.cli", "extractors"),
     "the worker never reaches for the development runtime, nor for media libraries"),
    ("streams.learning", ("streams.worker", "streams.local", "streams.cli", "extractors"),
     "the trainer reads what workers publish, and never reaches for the development runtime"),
    ("streams.sinks", ("streams.worker", "streams.learning", "streams.local", "streams.cli", "extractors"),
     "sinks write what they are given"),
    ("streams.local", ("streams.cli",), "the CLI sits on top"),
]


@pytest.mark.parametrize(("importer", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_packages_import_only_downwards(importer: str, forbidden: tuple[str, ...], why: str) -> None:
    bad = sorted(f"{mod} -> {dep}" for mod, deps in GRAPH.items() if within(mod, importer)
                 for dep in deps if any(within(dep, f) for f in forbidden))
    assert not bad, f"{why}: " + ", ".join(bad)


def test_the_shared_modules_at_the_top_of_streams_import_no_package_of_streams() -> None:
    top = [m for m in GRAPH if m.count(".") == 1 and m.startswith("streams.")]
    packages = ("streams.worker", "streams.sinks", "streams.learning", "streams.local", "streams.cli")
    bad = sorted(f"{m} -> {d}" for m in top for d in GRAPH[m] if any(within(d, p) for p in packages))
    assert not bad, ", ".join(bad)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; -> the components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles() -> None:
    assert strongly_connected(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_stay_readable() -> None:
    long = {name: n for name, path in project_modules().items() if (n := len(path.read_text().splitlines()))
            > MAX_MODULE_LINES}
    assert not long, f"split these by what their parts do: {long}"


def test_the_unit_tier_refuses_network_connections() -> None:
    import socket

    with socket.socket() as sock, pytest.raises(RuntimeError, match="unit tests use no network"):
        sock.connect(("127.0.0.1", 9))


MAX_FUNCTION_LINES = 65  # about 60, with room for a signature and a docstring


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def definitions() -> list[tuple[str, Definition, list[ast.ClassDef]]]:
    """(module, function or class node, enclosing classes) for every definition outside a function."""
    found: list[tuple[str, Definition, list[ast.ClassDef]]] = []

    def visit(name: str, node: ast.AST, classes: list[ast.ClassDef]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append((name, child, classes))
                if isinstance(child, ast.ClassDef):
                    visit(name, child, [*classes, child])

    for name, path in project_modules().items():
        visit(name, ast.parse(path.read_text()), [])
    return found


def protocol_methods() -> set[str]:
    """Methods a Protocol of ours documents: their implementations need not repeat the docstring."""
    return {item.name for _, node, _ in definitions() if isinstance(node, ast.ClassDef)
            and any(getattr(b, "id", getattr(b, "attr", "")) == "Protocol" for b in node.bases)
            for item in node.body if isinstance(item, ast.FunctionDef) and ast.get_docstring(item)}


def is_public(node: Definition, classes: list[ast.ClassDef]) -> bool:
    return not any(n.name.startswith("_") for n in [*classes, node])


def test_public_functions_and_classes_say_what_they_are_for() -> None:
    documented_elsewhere = protocol_methods() | {"forward"}  # torch documents nn.Module.forward
    missing = [f"{module}:{node.lineno} {node.name}" for module, node, classes in definitions()
               if is_public(node, classes) and ast.get_docstring(node) is None
               and not (classes and node.name in documented_elsewhere)]
    assert not missing, "no docstring: " + ", ".join(missing)


def test_public_signatures_name_their_parameters() -> None:
    # the model's maths keeps its conventional letters (x, y, a, b, m ...); the service and extractors do not
    one_letter = [f"{module}:{node.lineno} {node.name}({arg.arg})" for module, node, classes in definitions()
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(node, classes)
                  and not module.startswith("mmcl")
                  for arg in [*node.args.args, *node.args.kwonlyargs] if len(arg.arg) == 1]
    assert not one_letter, ", ".join(one_letter)


def test_functions_stay_short() -> None:
    long = [f"{module}:{node.lineno} {node.name} ({n} lines)" for module, node, _ in definitions()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES]
    assert not long, "split these where their parts have names: " + ", ".join(long)


def test_every_package_folder_is_a_package() -> None:
    # setuptools packs only folders with an __init__.py: a namespace folder would be missing from the wheel and image
    folders = {path.parent for path in project_modules().values()}
    assert not [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()]


def test_every_type_ignore_says_why() -> None:
    bare = [f"{name}:{i}" for name, path in project_modules().items()
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if "type: ignore" in line and not re.search(r"type: ignore\[[a-z-]+\]  # \S", line)]
    assert not bare, "a type: ignore names its error code and says why: " + ", ".join(bare)
