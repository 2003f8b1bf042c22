"""The layers of docs/architecture.md, checked on the imports: a module imports only its own layer
or those below it; siblings on one level (store, backends) do not import each other; the slot
runtime imports nothing from the package (it is shipped to slots as plain files); the engine and
everything below it never import the MCP SDK; there are no import cycles between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mcp_server"

#: layer -> rank (higher may import lower). Names are first-level parts of `mcp_server.`.
RANK = {
    "runtime": 0,
    "domain": 1,
    "store": 2, "backends": 2,
    "scheduling": 3, "trackers": 3,
    "engine": 4,
    "surface": 5,
    "demo": 6, "__main__": 6, "cli": 7,
}
MCP_FREE = {"runtime", "domain", "store", "backends", "scheduling", "trackers", "engine"}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, root: Path = PACKAGE, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved; with
    `runtime_only`, without those under `if TYPE_CHECKING:` (annotations only: no cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree) if runtime_only else set()
    me = _module_name(path, root).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from mcp_server.domain import ids` imports the module mcp_server.domain.ids
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names
                    if (root.parent / Path(*f"{mod}.{a.name}".split("."))).with_suffix(".py").exists()]
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mcp_server" else None


def layer_violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = _module_name(path, root)
        mine = _layer(me)
        if mine is None:
            continue
        if mine not in RANK:
            bad.append(f"{me}: not in a known layer (add it to RANK and docs/architecture.md)")
            continue
        for line, target in _imports(path, root):
            theirs = _layer(target)
            where = f"{me}:{line} imports {target}"
            if mine == "runtime" and target.startswith("mcp_server") and theirs != "runtime":
                bad.append(f"{where}: the runtime is stdlib only")
            if mine in MCP_FREE and (target == "mcp" or target.startswith("mcp.")):
                bad.append(f"{where}: only the MCP surface imports the MCP SDK")
            if theirs is None or theirs == mine or theirs not in RANK:
                continue
            if RANK[theirs] > RANK[mine]:
                bad.append(f"{where}: {mine} (layer {RANK[mine]}) imports {theirs} (layer {RANK[theirs]}), above it")
            elif RANK[theirs] == RANK[mine]:
                bad.append(f"{where}: {mine} and {theirs} are siblings and must not import each other")
    return bad


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p, root) for p in root.rglob("*.py")}
    for path in root.rglob("*.py"):
        me = _module_name(path, root)
        # a package's __init__ importing its own submodules is not a cycle worth reporting
        graph[me] = {t for _, t in _imports(path, root, runtime_only=True)
                     if t in modules and t != me and not t.startswith(me + ".")}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_no_layer_imports_one_above_it():
    assert layer_violations() == []


def test_no_import_cycles():
    assert import_cycles() == []


@pytest.mark.parametrize("module, line, expected", [
    ("engine/bad.py", "from mcp_server.surface.tools import common\n", "above it"),
    ("engine/bad.py", "import mcp.server\n", "only the MCP surface"),
    ("runtime/bad.py", "from mcp_server.domain import ids\n", "stdlib only"),
    ("store/bad.py", "from mcp_server.backends.base import Backend\n", "siblings"),
    ("domain/bad.py", "from ..scheduling import scheduler\n", "above it"),
])
def test_the_check_fails_on_an_upward_import(tmp_path, module, line, expected):
    """The check itself can fail: a copy of the package with one bad import added."""
    import shutil
    copy = tmp_path / "mcp_server"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / module).write_text(line)
    bad = layer_violations(copy)
    assert any(expected in b and module.replace("/", ".")[:-3] in b for b in bad), bad


def test_a_cycle_is_found(tmp_path):
    import shutil
    copy = tmp_path / "mcp_server"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "domain" / "cyc_a.py").write_text("from mcp_server.domain import cyc_b\n")
    (copy / "domain" / "cyc_b.py").write_text("from mcp_server.domain import cyc_a\n")
    cycles = import_cycles(copy)
    assert any("mcp_server.domain.cyc_a" in c and "mcp_server.domain.cyc_b" in c for c in cycles), cycles
