"""The package's layering, read from the source with ast (module-level and function-level imports):
no import cycles, report/ and regression never reach torch, no module over 450 lines, and benchmarks/ is
a package whose scripts import without sys.path edits."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
# Modules allowed over MAX_LINES (with their reason); keep this empty.
TOO_LONG_OK: dict[str, str] = {}
# Cycles closed only by an import inside a function (deferred on purpose); new ones fail the test.
# Left for the owners of these files: config <-> config_errors (the error-message half of config),
# data.base -> data.images -> data.refs -> data.base.
KNOWN_DEFERRED_CYCLES = {
    frozenset({"bench.config", "bench.config_errors"}),
    frozenset({"bench.data.base", "bench.data.images", "bench.data.refs"}),
}


def _modules(package: str) -> dict[str, Path]:
    mods = {}
    for p in sorted((ROOT / package).rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str], set[str]]:
    """(package modules imported at module level, at any level, every imported top-level name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    top_level = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef)) for n in ast.walk(stmt)}
    # methods' bodies are deferred too; class bodies themselves run at import
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef):
            top_level |= {id(n) for s in stmt.body
                          if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(s)}
    module_level, any_level, roots = set(), set(), set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
        for t in targets:
            roots.add(t.split(".")[0])
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                # a module's own parent packages are imported before it: not an edge of the graph
                if dep in known and dep != name and not name.startswith(dep + "."):
                    any_level.add(dep)
                    if id(node) in top_level:
                        module_level.add(dep)
    return module_level, any_level, roots


MODULES = _modules("bench")
GRAPH = {n: _imports(n, p, MODULES) for n, p in MODULES.items()}


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    # a few edges known from the source, so that an empty graph cannot pass the cycle tests
    assert "bench.errors" in GRAPH["bench.models.hub"][0]
    checkpoint = GRAPH["bench.models.phi3v.checkpoint"]
    assert "bench.models.hub" in checkpoint[1] - checkpoint[0]  # imported in a function
    assert "bench.runner" not in GRAPH["bench.tasks"][0]  # under TYPE_CHECKING only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles_at_module_level():
    assert _cycles({n: g[0] for n, g in GRAPH.items()}) == []


def test_no_new_import_cycles_with_function_level_imports():
    new = [sorted(c) for c in _cycles({n: g[1] for n, g in GRAPH.items()}) if c not in KNOWN_DEFERRED_CYCLES]
    assert new == []


def test_report_and_regression_never_reach_torch():
    starts = [n for n in MODULES if n.startswith("bench.report")] + ["bench.regression", "bench.cli_report"]
    seen, todo = set(), list(starts)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(GRAPH[n][1])
    heavy = {n: sorted(GRAPH[n][2] & {"torch", "transformers", "accelerate", "safetensors"}) for n in seen}
    assert {n: h for n, h in heavy.items() if h} == {}
    code = ("import sys, bench.report, bench.regression, bench.cli_report, bench.report.markdown, "
            "bench.report.html, bench.report.plots; assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_no_module_is_over_the_size_limit():
    sizes = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES and n not in TOO_LONG_OK} == {}
    assert all(sizes[n] > MAX_LINES for n in TOO_LONG_OK)  # an exception that no longer applies is removed


BENCHMARKS = _modules("benchmarks")


def test_benchmarks_is_a_package_without_sys_path_edits():
    assert "benchmarks" in BENCHMARKS and "benchmarks.run_all" in BENCHMARKS
    for name, path in BENCHMARKS.items():
        assert "sys.path" not in path.read_text(), name
    code = "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in BENCHMARKS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr

