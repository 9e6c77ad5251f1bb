"""The package's import graph, read from the source with ast: no cycle, and the report package's one-way flow.
Every import counts, a lazy one inside a function and importlib.import_module("...") with a literal name too:
a cycle through a lazy import is still a cycle (report.py and report_plots.py once imported each other so)."""
import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "pgt_train"


def module_name(path: Path, *, top: Path) -> str:
    parts = path.relative_to(top).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, *, module: str, is_package: bool) -> set[str]:
    """Dotted names this module imports: `import a.b`, `from a import b` (both a and a.b: b may be a module),
    relative imports resolved, and importlib.import_module with a literal string."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (a name that is an attribute, not a module, drops out)."""
    files = {module_name(p, top=root.parent): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        names = imported_names(ast.parse(path.read_text()), module=module, is_package=path.name == "__init__.py")
        graph[module] = {n for n in names if n in files and n != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph is acyclic (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []




def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "pgt_train.report.cli" in graph  # the whole package was read
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_lazy_imports_are_edges_and_a_cycle_is_found(tmp_path):
    # What the check must catch: a module imports another lazily, by importlib, and that one imports it back.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import importlib\n\ndef f():\n    return importlib.import_module('pkg.b')\n")
    (pkg / "b.py").write_text("from pkg.a import f\nfrom . import c\n")
    (pkg / "c.py").write_text("")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg", "pkg.a", "pkg.c"}, "pkg.c": set()}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) == []


def test_report_figures_depend_on_the_data_model_never_the_reverse():
    graph = import_graph()
    report = {m for m in graph if m.startswith("pgt_train.report.")}
    assert {"pgt_train.report.model", "pgt_train.report.figures", "pgt_train.report.cli"} <= report
    importers = {m for m in graph if "pgt_train.report.figures" in graph[m]}
    assert importers == {"pgt_train.report.cli"}  # lazily: the tables need no matplotlib
    assert not graph["pgt_train.report.model"] & report  # the data model imports no other report module
    # The top: only `python -m pgt_train.report` imports the CLI.
    assert {m for m in graph if "pgt_train.report.cli" in graph[m]} == {"pgt_train.report.__main__"}
