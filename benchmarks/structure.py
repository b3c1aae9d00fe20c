"""The package's structure in numbers, to compare before and after a refactor (issue 23).

Pure static analysis (``ast``; the package is never imported), so it runs on any checkout::

    python benchmarks/structure.py --root /path/to/checkout --output structure-before.json

It reports (1) the ``cprec_recbole`` modules that ``models/cprec.py`` pulls in transitively,
following absolute and relative imports, function-local ones included, and, as Python does,
the parent packages of every imported module (``import a.b.c`` runs ``a`` and ``a.b`` first);
``if TYPE_CHECKING:`` blocks never run, so they are skipped; (2) the functions and methods
longer than 60 lines (``def`` to last line, docstring included); (3) import cycles: strongly
connected components of more than one module, once over the imports run at import time and
once over all imports.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "cprec_recbole"
START = f"{PACKAGE}.models.cprec"
LONG = 60

Graph = dict[str, set[str]]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    names = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def with_parents(name: str) -> Iterator[str]:
    """``a.b.c``, ``a.b``, ``a``: what ``import a.b.c`` runs."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        yield ".".join(parts[:end])


def imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """``(imported module, imported inside a function)`` for every import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes: list[ast.AST] = list(node.orelse)
        else:
            nodes = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield from ((alias.name, local) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]  # level 1: this package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else base), local
        local = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in nodes:
            yield from visit(child, local)

    yield from visit(ast.parse(path.read_text(), str(path)), False)


def graphs(modules: dict[str, Path]) -> tuple[Graph, Graph]:
    """The package's import graphs: (imports run at import time, all imports)."""
    eager: Graph = {m: set() for m in modules}
    every: Graph = {m: set() for m in modules}
    for module, path in modules.items():
        for target, local in imports(module, path, modules):
            for name in with_parents(target):
                if name in modules and name != module:
                    every[module].add(name)
                    if not local:
                        eager[module].add(name)
    return eager, every


def reachable(graph: Graph, start: str) -> list[str]:
    seen, todo = {start}, [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return sorted(seen - {start})


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def long_functions(root: Path, modules: dict[str, Path]) -> list[dict[str, object]]:
    """Functions and methods (nested ones too) longer than ``LONG`` lines, longest first."""
    found = []

    def visit(node: ast.AST, prefix: str, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > LONG:
                    where = f"{path.relative_to(root)}:{child.lineno}"
                    found.append({"name": name, "where": where, "lines": length})
            visit(child, name, path)

    for module, path in modules.items():
        visit(ast.parse(path.read_text(), str(path)), module, path)
    return sorted(found, key=lambda f: (-int(f["lines"]), str(f["name"])))


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "structure.json"
    )
    args = parser.parse_args(argv)
    modules = module_names(args.root)
    eager, every = graphs(modules)
    pulled = reachable(every, START)
    long = long_functions(args.root, modules)
    found = {"import_time": cycles(eager), "all_imports": cycles(every)}
    report: dict[str, object] = {
        "modules": len(modules),
        "cprec_imports": {"from": START, "count": len(pulled), "modules": pulled},
        "long_functions": {"over_lines": LONG, "count": len(long), "functions": long},
        "cycles": found,
    }
    print(f"{len(modules)} modules in {args.root / PACKAGE}")
    print(f"\n{START} pulls in {len(pulled)} modules:\n  " + "\n  ".join(pulled))
    print(f"\n{len(long)} functions over {LONG} lines:")
    for f in long:
        print(f"  {f['lines']:>4}  {f['name']}  ({f['where']})")
    for kind, components in found.items():
        print(f"\nimport cycles, {kind.replace('_', ' ')}: {len(components)}")
        for cycle in components:
            print(f"  {len(cycle)}: " + ", ".join(cycle))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {args.output}")
    return report


if __name__ == "__main__":
    main()
