"""The package's layers: every module's imports (read with ast, including those inside functions) point down the
layer order, never up, and no two modules import each other in a cycle. Imports under ``if TYPE_CHECKING:`` are
annotations only and do not count."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "watermark_ood"
LAYERS = ("core", "data", "models", "runtime", "watermark", "detection", "evaluation", "selection", "reporting",
          "pipelines")  # bottom to top; cli, __init__, __main__ and the compatibility modules sit above them all
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)  # the top: cli, the package's __init__, compatibility re-exports


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports at run time (a ``from X import name`` of a submodule counts as it)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("watermark_ood"))
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else (node.module or ""))
            if not base.startswith("watermark_ood"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != module_name(path)}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = sorted(m for m in GRAPH[module] if layer_of(m) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports a layer above it: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_layer_is_a_package_and_every_module_in_one():
    assert all((PACKAGE / layer / "__init__.py").is_file() for layer in LAYERS)
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "__main__", "cli", *COMPATIBILITY}, sorted(top - {"__init__", "__main__", "cli"})


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small(module):
    text = MODULES[module].read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES or "longer than" in (ast.get_docstring(ast.parse(text)) or "").lower(), (
        f"{module}: {lines} lines (at most {MAX_MODULE_LINES}, or a docstring saying why it is longer)")


COMPATIBILITY = {"architectures", "bench", "checkpoint", "config", "conformal", "datasets", "demo", "detector",
                 "detectors", "distributed", "errors", "export", "features", "fileio", "idx", "learner", "metrics",
                 "objectives", "preprocessing", "progress", "schema", "scores", "streaming", "tuning", "validation"}


TESTS = Path(__file__).resolve().parents[1]
TEST_FOLDERS_BEYOND_LAYERS = {"architecture", "benchmarks", "cli", "compatibility", "product", "studies"}


def test_tests_mirror_the_layers():
    """A test lives in the folder of the layer it tests (or of the product part: cli, benchmarks, studies, ...)."""
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not loose, f"tests outside a layer folder: {loose}"
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders <= set(LAYERS) | TEST_FOLDERS_BEYOND_LAYERS, folders - set(LAYERS) - TEST_FOLDERS_BEYOND_LAYERS
    untested = [layer for layer in LAYERS if layer != "core" and layer not in folders]
    assert not untested, f"layers without a test folder: {untested}"
